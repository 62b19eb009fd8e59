#!/usr/bin/env bash
# Installs apiary on a host from a release build (cargo build --release):
# binaries to /usr/local/bin, systemd units, bash/zsh/fish completions and
# man pages generated from the same clap definitions as the binaries.
#   sudo deploy/install.sh [agent|coordinator|all]
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-all}
bin=target/release
[ "$(id -u)" = 0 ] || { echo "install.sh: run as root" >&2; exit 64; }
for b in agent coordinator ctl; do [ -x "$bin/$b" ] || { echo "install.sh: $bin/$b missing: cargo build --release" >&2; exit 1; }; done
install -m 0755 "$bin/ctl" /usr/local/bin/ctl
case "$what" in
  agent|all) install -m 0755 "$bin/agent" /usr/local/bin/agent
             install -m 0644 deploy/systemd/apiary-agent.service /etc/systemd/system/ ;;&
  coordinator|all) install -m 0755 "$bin/coordinator" /usr/local/bin/coordinator
             install -m 0644 deploy/systemd/apiary-coordinator.service /etc/systemd/system/ ;;
esac
install -d /usr/share/bash-completion/completions /usr/share/zsh/vendor-completions /usr/share/fish/vendor_completions.d /usr/local/share/man/man1
# Completions and man pages for each installed program, from its own clap
# definition (the agent's generators are hidden flags: it has no subcommands).
completions() { # program, then the arguments that print a script for a shell
  local b=$1; shift
  "$@" bash > "/usr/share/bash-completion/completions/$b"
  "$@" zsh > "/usr/share/zsh/vendor-completions/_$b"
  "$@" fish > "/usr/share/fish/vendor_completions.d/$b.fish"
}
completions ctl /usr/local/bin/ctl completions
/usr/local/bin/ctl man /usr/local/share/man/man1 >/dev/null
if [ -x /usr/local/bin/coordinator ] && [ "$what" != agent ]; then
  completions coordinator /usr/local/bin/coordinator completions
  /usr/local/bin/coordinator man /usr/local/share/man/man1 >/dev/null
fi
if [ -x /usr/local/bin/agent ] && [ "$what" != coordinator ]; then
  completions agent /usr/local/bin/agent --generate-completions
  /usr/local/bin/agent --generate-man /usr/local/share/man/man1 >/dev/null
fi
command -v mandb >/dev/null && mandb -q 2>/dev/null || true
command -v systemctl >/dev/null && systemctl daemon-reload 2>/dev/null || true
echo "installed; enable with: systemctl enable --now apiary-agent (or apiary-coordinator)"
