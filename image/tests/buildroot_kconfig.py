"""Evaluates a Buildroot defconfig with kconfiglib against a model of the Buildroot symbols it
relies on (tests/fixtures/buildroot-model.in) plus the external tree's own Config.in files, the
way `make <name>_defconfig` would, and fails when:

- a setting does not survive (Buildroot drops it silently): the symbol, the value it got and
  the dependency that is not met, followed down to the symbol that causes it;
- the file is not what `make savedefconfig` would write back (a default restated, or a
  setting missing);
- the system Berth needs does not resolve (glibc, berth, busybox, kernel, GRUB for BIOS and
  EFI, the host tools the post-image script runs).

usage: buildroot_kconfig.py MODEL EXTERNAL_TREE DEFCONFIG
"""

import os
import sys
import tempfile

import kconfiglib

# What the resolved configuration must hold, beyond the defconfig's own settings.
RESOLVED = {
    "BR2_TOOLCHAIN_USES_GLIBC": "y",
    "BR2_PACKAGE_BERTH": "y",
    "BR2_PACKAGE_HOST_RUSTC": "y",
    "BR2_PACKAGE_BUSYBOX": "y",
    "BR2_LINUX_KERNEL": "y",
    "BR2_LINUX_KERNEL_BZIMAGE": "y",
    "BR2_TARGET_GRUB2_I386_PC": "y",
    "BR2_TARGET_GRUB2_X86_64_EFI": "y",
    "BR2_TARGET_ROOTFS_EROFS": "y",
    "BR2_PACKAGE_HOST_EROFS_UTILS": "y",
    "BR2_PACKAGE_HOST_CRYPTSETUP": "y",
    "BR2_PACKAGE_HOST_DOSFSTOOLS": "y",
    "BR2_PACKAGE_HOST_E2FSPROGS": "y",
    "BR2_PACKAGE_HOST_MTOOLS": "y",
    "BR2_PACKAGE_HOST_QEMU": "y",
    "BR2_REPRODUCIBLE": "y",
}


def settings(path):
    """NAME -> value (strings unquoted) of a defconfig, in file order."""
    out = {}
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            name, sep, value = line.partition("=")
            if not sep:
                sys.exit(f"{path}:{n}: not NAME=VALUE: {line}")
            if value.startswith('"') and value.endswith('"'):
                value = value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
            out[name] = value
    return out


def explain(kconf, sym, depth=0, seen=None):
    """Why `sym` is not y: its unmet dependencies, followed to their cause."""
    seen = set() if seen is None else seen
    if sym.name in seen or depth > 6:
        return []
    seen.add(sym.name)
    pad = "    " * (depth + 1)
    lines = []
    if sym.direct_dep is not kconf.y and kconfiglib.expr_value(sym.direct_dep) == 0:
        for term in kconfiglib.split_expr(sym.direct_dep, kconfiglib.AND):
            if kconfiglib.expr_value(term) != 0:
                continue
            lines.append(f"{pad}unmet: depends on {kconfiglib.expr_str(term)}")
            for dep in kconfiglib.expr_items(term):
                if isinstance(dep, kconfiglib.Symbol) and dep.tri_value == 0 and dep.nodes:
                    lines += explain(kconf, dep, depth + 1, seen)
        return lines
    if sym.choice is not None and sym.choice.selection is not sym:
        chosen = sym.choice.selection.name if sym.choice.selection else "nothing"
        lines.append(f"{pad}the choice took {chosen} instead")
        return lines
    if not any(node.prompt for node in sym.nodes):
        # No prompt: only a default or a select sets it.
        for default, cond in sym.defaults:
            lines.append(
                f"{pad}default {kconfiglib.expr_str(default)} if "
                f"{kconfiglib.expr_str(cond)}: condition is n"
            )
            for dep in kconfiglib.expr_items(cond):
                if isinstance(dep, kconfiglib.Symbol) and dep.tri_value == 0 and dep.nodes:
                    lines += explain(kconf, dep, depth + 1, seen)
        selectors = kconfiglib.expr_items(sym.rev_dep)
        if selectors:
            names = ", ".join(s.name for s in selectors if isinstance(s, kconfiglib.Symbol))
            lines.append(f"{pad}selected only by: {names} (all n)")
            for s in selectors:
                if isinstance(s, kconfiglib.Symbol) and s.tri_value == 0 and s.nodes:
                    lines += explain(kconf, s, depth + 1, seen)
        if not sym.defaults and not selectors:
            lines.append(f"{pad}nothing sets it")
    return lines


def main():
    model, tree, defconfig = sys.argv[1:4]
    os.environ["BR2_EXTERNAL_BERTH_PATH"] = os.path.abspath(tree)
    # Buildroot's symbols carry their BR2_ prefix in their names; .config adds none.
    os.environ["CONFIG_"] = ""
    kconf = kconfiglib.Kconfig(model, warn=False)
    wanted = settings(defconfig)
    kconf.load_config(defconfig, replace=True)
    problems = []

    for name, value in wanted.items():
        sym = kconf.syms.get(name)
        if sym is None or not sym.nodes:
            problems.append(
                f"{name}: not in the model of Buildroot's symbols "
                f"({os.path.basename(model)}); add it with its dependencies"
            )
            continue
        if sym.str_value != value:
            got = sym.str_value if sym.str_value != "" or sym.orig_type != kconfiglib.BOOL else "n"
            problems.append(
                f"{name}={value!r} is dropped (Buildroot makes it {got!r})\n"
                + "\n".join(explain(kconf, sym))
            )

    for name, value in RESOLVED.items():
        sym = kconf.syms.get(name)
        if sym is None or sym.str_value != value:
            got = sym.str_value if sym is not None else "undefined"
            problems.append(
                f"{name} resolves to {got!r}, Berth needs {value!r}\n"
                + ("\n".join(explain(kconf, sym)) if sym is not None else "")
            )

    if not problems:
        # `make savedefconfig` writes the settings that differ from the defaults: it must give
        # back exactly the file's settings.
        with tempfile.NamedTemporaryFile("r", suffix=".defconfig") as tmp:
            kconf.write_min_config(tmp.name, header="")
            minimal = settings(tmp.name)
        for name in wanted.keys() - minimal.keys():
            problems.append(f"{name}: restates a default (savedefconfig would drop the line)")
        for name in minimal.keys() - wanted.keys():
            problems.append(f"{name}={minimal[name]!r}: savedefconfig would add it")

    if problems:
        print(f"{defconfig}: {len(problems)} problem(s)")
        for p in problems:
            print(p)
        sys.exit(1)
    print(f"{defconfig}: {len(wanted)} settings survive, savedefconfig round-trips")


if __name__ == "__main__":
    main()
