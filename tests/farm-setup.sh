#!/usr/bin/env bash
# Installs what the simulated board farm (tests/farm.py) needs: Debian's openssh-server (for /usr/sbin/sshd),
# iproute2 (for `ip netns`) and procps (pgrep). Non-interactive and idempotent. The package's service is never
# started: each farm board runs its own sshd, in its own network namespace, with its own config; nothing listens
# system-wide.
set -euo pipefail

log() { printf '[farm-setup] %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
    log "must run as root (apt-get, network namespaces)"; exit 1
fi

missing=()
for package in openssh-server iproute2 procps; do
    dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done

if [ ${#missing[@]} -gt 0 ]; then
    # invoke-rc.d asks /usr/sbin/policy-rc.d whether it may start a service; exit code 101 means "no". Only a
    # policy of our own is put there (and removed afterwards): an existing one is left as it is.
    policy=/usr/sbin/policy-rc.d
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' > "$policy"
        chmod 755 "$policy"
        trap 'rm -f "$policy"' EXIT
    fi
    log "apt-get install ${missing[*]} (services not started)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    # Under systemd the package also enables its service for the next boot: not on a machine we set up for tests.
    if [[ " ${missing[*]} " == *" openssh-server "* ]] && [ -d /run/systemd/system ]; then
        systemctl disable --quiet ssh.service || true
    fi
fi

# Debian's package keeps the privilege-separation directory under /run (a tmpfs): it is gone after a reboot.
mkdir -p /run/sshd
chmod 755 /run/sshd

if [ ! -x /usr/sbin/sshd ]; then
    log "/usr/sbin/sshd is missing after the install"; exit 1
fi
command -v ip >/dev/null || { log "ip (iproute2) is missing after the install"; exit 1; }
command -v ssh-keygen >/dev/null || { log "ssh-keygen is missing after the install"; exit 1; }
log "ready: $(/usr/sbin/sshd -V 2>&1 | head -n 1), $(ip -V)"
