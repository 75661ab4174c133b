//! Ordering of units by `after`/`requires`: topological start order and cycle detection.
//!
//! The supervisor starts units as their dependencies come up and stops them in reverse; this
//! module only answers questions about the graph. Edges to names that are not in the graph are
//! ignored here (the supervisor decides what a missing dependency means).

use std::collections::HashMap;

/// A dependency graph over named nodes; `deps[i]` are the nodes `i` is ordered after.
pub struct Graph {
    names: Vec<String>,
    deps: Vec<Vec<usize>>,
}

impl Graph {
    /// Builds the graph from `(name, ordered-after names)` pairs.
    pub fn new<'a, I, D>(nodes: I) -> Graph
    where
        I: IntoIterator<Item = (&'a str, D)>,
        D: IntoIterator<Item = &'a str>,
    {
        let nodes: Vec<(&str, Vec<&str>)> = nodes
            .into_iter()
            .map(|(n, d)| (n, d.into_iter().collect()))
            .collect();
        let index: HashMap<&str, usize> = nodes
            .iter()
            .enumerate()
            .map(|(i, (n, _))| (*n, i))
            .collect();
        let deps = nodes
            .iter()
            .map(|(_, d)| {
                let mut v: Vec<usize> = d.iter().filter_map(|n| index.get(n).copied()).collect();
                v.sort_unstable();
                v.dedup();
                v
            })
            .collect();
        Graph {
            names: nodes.iter().map(|(n, _)| n.to_string()).collect(),
            deps,
        }
    }

    /// Every cycle (strongly connected component with more than one node, or a self-loop),
    /// each as the node names in dependency order, the first repeated at the end:
    /// `["a", "b", "a"]` means a is after b and b is after a.
    pub fn cycles(&self) -> Vec<Vec<String>> {
        let mut out = Vec::new();
        for component in self.components() {
            let is_cycle = component.len() > 1 || self.deps[component[0]].contains(&component[0]);
            if is_cycle {
                out.push(self.cycle_path(&component));
            }
        }
        out.sort();
        out
    }

    /// A start order: every node after the nodes it depends on; nodes in cycles come last,
    /// in name order. Ties keep input order.
    pub fn start_order(&self) -> Vec<usize> {
        let n = self.names.len();
        let mut pending: Vec<usize> = self.deps.iter().map(Vec::len).collect();
        let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); n];
        for (i, d) in self.deps.iter().enumerate() {
            for &j in d {
                dependents[j].push(i);
            }
        }
        let mut ready: std::collections::BTreeSet<usize> =
            (0..n).filter(|&i| pending[i] == 0).collect();
        let mut order = Vec::with_capacity(n);
        while let Some(i) = ready.pop_first() {
            order.push(i);
            for &k in &dependents[i] {
                pending[k] -= 1;
                if pending[k] == 0 {
                    ready.insert(k);
                }
            }
        }
        let mut rest: Vec<usize> = (0..n).filter(|i| !order.contains(i)).collect();
        rest.sort_by(|a, b| self.names[*a].cmp(&self.names[*b]));
        order.extend(rest);
        order
    }

    /// Tarjan's strongly connected components, iteratively (no deep recursion in PID 1).
    fn components(&self) -> Vec<Vec<usize>> {
        let n = self.names.len();
        let mut index = vec![usize::MAX; n];
        let mut low = vec![0; n];
        let mut on_stack = vec![false; n];
        let mut stack = Vec::new();
        let mut out = Vec::new();
        let mut next = 0;
        for root in 0..n {
            if index[root] != usize::MAX {
                continue;
            }
            // (node, position in its dependency list)
            let mut work = vec![(root, 0usize)];
            while let Some(&mut (v, ref mut pos)) = work.last_mut() {
                if *pos == 0 && index[v] == usize::MAX {
                    index[v] = next;
                    low[v] = next;
                    next += 1;
                    stack.push(v);
                    on_stack[v] = true;
                }
                if let Some(&w) = self.deps[v].get(*pos) {
                    *pos += 1;
                    if index[w] == usize::MAX {
                        work.push((w, 0));
                    } else if on_stack[w] {
                        low[v] = low[v].min(index[w]);
                    }
                    continue;
                }
                work.pop();
                if let Some(&(parent, _)) = work.last() {
                    low[parent] = low[parent].min(low[v]);
                }
                if low[v] == index[v] {
                    let mut component = Vec::new();
                    while let Some(w) = stack.pop() {
                        on_stack[w] = false;
                        component.push(w);
                        if w == v {
                            break;
                        }
                    }
                    out.push(component);
                }
            }
        }
        out
    }

    /// A closed walk through a strongly connected component, starting at its smallest name.
    fn cycle_path(&self, component: &[usize]) -> Vec<String> {
        let Some(&start) = component
            .iter()
            .min_by(|a, b| self.names[**a].cmp(&self.names[**b]))
        else {
            return Vec::new();
        };
        // Breadth-first search from start's dependencies back to start, inside the component.
        let mut parent: HashMap<usize, usize> = HashMap::new();
        let mut queue = std::collections::VecDeque::from([start]);
        while let Some(v) = queue.pop_front() {
            for &w in &self.deps[v] {
                if !component.contains(&w) {
                    continue;
                }
                if w == start {
                    let mut path = vec![start];
                    let mut cur = v;
                    while cur != start {
                        path.push(cur);
                        cur = parent.get(&cur).copied().unwrap_or(start);
                    }
                    path.push(start);
                    let last = path.len() - 1;
                    path[1..last].reverse();
                    return path.iter().map(|&i| self.names[i].clone()).collect();
                }
                if let std::collections::hash_map::Entry::Vacant(e) = parent.entry(w) {
                    e.insert(v);
                    queue.push_back(w);
                }
            }
        }
        vec![self.names[start].clone()]
    }
}

/// `a -> b -> a` for messages.
pub fn describe_cycle(cycle: &[String]) -> String {
    cycle.join(" -> ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(spec: &[(&'static str, &[&'static str])]) -> Graph {
        Graph::new(spec.iter().map(|(n, d)| (*n, d.iter().copied())))
    }

    #[test]
    fn start_order_respects_dependencies() {
        let g = graph(&[
            ("web", &["db", "net"]),
            ("db", &["net"]),
            ("net", &[]),
            ("log", &["missing"]),
        ]);
        let names: Vec<&str> = g
            .start_order()
            .iter()
            .map(|&i| g.names[i].as_str())
            .collect();
        let pos = |n: &str| names.iter().position(|x| *x == n).unwrap();
        assert!(pos("net") < pos("db") && pos("db") < pos("web"));
        assert_eq!(names.len(), 4);
        assert!(g.cycles().is_empty());
    }

    #[test]
    fn cycles_are_named_in_dependency_order() {
        let g = graph(&[
            ("a", &["b"]),
            ("b", &["c"]),
            ("c", &["a"]),
            ("d", &["a"]),
            ("e", &["e"]),
        ]);
        assert_eq!(
            g.cycles(),
            vec![
                vec!["a".to_string(), "b".into(), "c".into(), "a".into()],
                vec!["e".into(), "e".into()]
            ]
        );
        assert_eq!(describe_cycle(&g.cycles()[0]), "a -> b -> c -> a");
        // Nodes in or behind a cycle still appear in the order, last.
        assert_eq!(g.start_order().len(), 5);
    }

    #[test]
    fn long_chains_do_not_recurse() {
        let names: Vec<String> = (0..5000).map(|i| format!("u{i}")).collect();
        let g = Graph::new((0..5000).map(|i| {
            let dep: Vec<&str> = if i > 0 {
                vec![names[i - 1].as_str()]
            } else {
                vec![]
            };
            (names[i].as_str(), dep)
        }));
        assert!(g.cycles().is_empty());
        assert_eq!(g.start_order()[0], 0);
    }
}
