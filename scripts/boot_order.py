"""berth-init's boot order list (init/boot.order) against lld's linker map of a build.

  boot_order.py coverage LIST MAP     how many of the list's functions the build has
  boot_order.py write LOG MAP LIST    the list from QEMU's translation log (`-d in_asm`)
                                      of a boot of that build

lld's map has "VMA LMA size align name" lines: an output section (".text"), its input
sections ("file:(.text.name)") and their symbols (alignment 1). Only .text's symbols count.
"""

import bisect
import sys

HEADER = (
    "# berth-init's functions in the order its boot first runs them (PID 1 to the demo\n"
    "# container started), for the linker (init/build.rs). Written by scripts/boot-order.sh.\n"
)


def text_symbols(map_path):
    """{address: (size, name)} of the map's .text symbols."""
    symbols, section = {}, None
    with open(map_path, errors="replace") as f:
        for line in f:
            fields = line.split()
            if len(fields) != 5 or ":(" in fields[4]:
                continue
            if fields[4].startswith("."):
                section = fields[4]
            elif section == ".text" and fields[3] == "1":
                symbols.setdefault(int(fields[0], 16), (int(fields[2], 16), fields[4]))
    return symbols


def listed(list_path):
    with open(list_path) as f:
        return [l.strip() for l in f if l.strip() and not l.startswith("#")]


def coverage(list_path, map_path):
    wanted = listed(list_path)
    have = {name for _, name in text_symbols(map_path).values()}
    found = sum(1 for w in wanted if w in have)
    print(f"boot order: {found} of {len(wanted)} functions of init/boot.order are in "
          "berth-init (scripts/boot-order.sh renews the list)")


def write(log_path, map_path, list_path):
    symbols = text_symbols(map_path)
    entry = next((a for a, (_, n) in symbols.items() if n == "_start"), None)
    if entry is None:
        sys.exit("boot-order: no _start in the linker map")
    starts = sorted(symbols)
    base, order, seen = None, [], set()
    with open(log_path, errors="replace") as log:
        for line in log:
            # Instruction lines: "0x<address>:  <bytes> <mnemonic>"; user space is below 2^47.
            head = line.split(":", 1)[0]
            if not head.startswith("0x") or len(head) > 16:
                continue
            address = int(head, 16)
            if address < 1 << 32:
                continue  # firmware and boot loader (PID 1 is mapped far above 4 GiB)
            if base is None:
                base = address - entry  # PID 1's first instruction is berth-init's _start
            i = bisect.bisect_right(starts, address - base) - 1
            if i < 0:
                continue
            start = starts[i]
            size, name = symbols[start]
            if address - base < start + max(size, 1) and name not in seen:
                seen.add(name)
                order.append((name, size))
    with open(list_path, "w") as f:
        f.write(HEADER)
        f.writelines(name + "\n" for name, _ in order)
    print(f"boot-order: {len(order)} functions, {sum(s for _, s in order) // 1024} KiB of "
          f"code, into {list_path}")


if __name__ == "__main__":
    commands = {"coverage": (coverage, 2), "write": (write, 3)}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        sys.exit(__doc__)
    command, count = commands[sys.argv[1]]
    if len(sys.argv) != count + 2:
        sys.exit(__doc__)
    command(*sys.argv[2:])
