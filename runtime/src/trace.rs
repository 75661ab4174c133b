//! Step timings of one container's setup: PID 1 logs them as one line per container start,
//! and `bench/boot.sh` tabulates that line, so a slower boot shows which step grew. Off until
//! [`begin`] is called (the runc-compatible CLI never calls it); a step costs one clock read.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

struct Steps {
    last: Instant,
    done: Vec<(&'static str, Duration)>,
}

static STEPS: Mutex<Option<Steps>> = Mutex::new(None);

fn steps() -> MutexGuard<'static, Option<Steps>> {
    // A panic while holding the lock leaves nothing half-written that matters here.
    STEPS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Starts timing; the first step is measured from here.
pub fn begin() {
    *steps() = Some(Steps {
        last: Instant::now(),
        done: Vec::with_capacity(16),
    });
}

/// Ends the step `name`: the time since the previous step (or [`begin`]). Nothing when off.
pub fn step(name: &'static str) {
    if let Some(s) = steps().as_mut() {
        let now = Instant::now();
        s.done.push((name, now.duration_since(s.last)));
        s.last = now;
    }
}

/// Stops timing and returns the steps, in order (`None` when [`begin`] was not called).
pub fn finish() -> Option<Vec<(&'static str, Duration)>> {
    steps().take().map(|s| s.done)
}

/// `total 412.3 ms: remove 20.1, lookup 44.0, ...` (milliseconds, one decimal).
pub fn summary(done: &[(&'static str, Duration)]) -> String {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let total: Duration = done.iter().map(|(_, d)| *d).sum();
    let parts: Vec<String> = done
        .iter()
        .map(|(name, d)| format!("{name} {:.1}", ms(*d)))
        .collect();
    format!("total {:.1} ms: {}", ms(total), parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_recorded_only_between_begin_and_finish() {
        step("ignored");
        assert!(finish().is_none());
        begin();
        step("one");
        step("two");
        let done = finish().unwrap_or_default();
        assert_eq!(
            done.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            ["one", "two"]
        );
        step("after");
        assert!(finish().is_none());
    }

    #[test]
    fn summary_lists_steps_in_order_with_the_total() {
        let done = [
            ("remove", Duration::from_micros(20_140)),
            ("lookup", Duration::from_micros(1_000)),
        ];
        assert_eq!(summary(&done), "total 21.1 ms: remove 20.1, lookup 1.0");
    }
}
