#!/usr/bin/env bash
# Installs apiary on a host from a release build (cargo build --release):
# binaries to /usr/local/bin, systemd units, bash/zsh/fish completions and
# man pages for all three programs, generated from the same clap definitions
# as the binaries.
#   sudo deploy/install.sh [agent|coordinator|all]
# Packagers: DESTDIR=/tmp/stage installs below that root (no root needed, no
# systemctl/mandb); APIARY_BIN=DIR takes the binaries from DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-all}
bin=${APIARY_BIN:-target/release}
root=${DESTDIR:-}
[ -n "$root" ] || [ "$(id -u)" = 0 ] || { echo "install.sh: run as root (or set DESTDIR)" >&2; exit 64; }
case "$what" in agent|coordinator|all) ;; *) echo "install.sh: install what? agent, coordinator or all" >&2; exit 64 ;; esac
for b in agent coordinator ctl; do [ -x "$bin/$b" ] || { echo "install.sh: $bin/$b missing: cargo build --release" >&2; exit 1; }; done
bindir=$root/usr/local/bin man1=$root/usr/local/share/man/man1 units=$root/etc/systemd/system
install -d "$bindir" "$units" "$man1" "$root/usr/share/bash-completion/completions" \
  "$root/usr/share/zsh/vendor-completions" "$root/usr/share/fish/vendor_completions.d"
install -m 0755 "$bin/ctl" "$bindir/ctl"
case "$what" in
  agent|all) install -m 0755 "$bin/agent" "$bindir/agent"
             install -m 0644 deploy/systemd/apiary-agent.service "$units/" ;;&
  coordinator|all) install -m 0755 "$bin/coordinator" "$bindir/coordinator"
             install -m 0644 deploy/systemd/apiary-coordinator.service "$units/" ;;
esac
# Completions and man pages for each installed program, from its own clap
# definition (the agent's generators are hidden flags: it has no subcommands).
completions() { # program, then the arguments that print a script for a shell
  local b=$1; shift
  "$@" bash > "$root/usr/share/bash-completion/completions/$b"
  "$@" zsh > "$root/usr/share/zsh/vendor-completions/_$b"
  "$@" fish > "$root/usr/share/fish/vendor_completions.d/$b.fish"
}
completions ctl "$bindir/ctl" completions
"$bindir/ctl" man "$man1" >/dev/null
if [ "$what" != agent ]; then
  completions coordinator "$bindir/coordinator" completions
  "$bindir/coordinator" man "$man1" >/dev/null
fi
if [ "$what" != coordinator ]; then
  completions agent "$bindir/agent" --generate-completions
  "$bindir/agent" --generate-man "$man1" >/dev/null
fi
if [ -z "$root" ]; then
  command -v mandb >/dev/null && mandb -q 2>/dev/null || true
  command -v systemctl >/dev/null && systemctl daemon-reload 2>/dev/null || true
fi
echo "installed; enable with: systemctl enable --now apiary-agent (or apiary-coordinator)"
