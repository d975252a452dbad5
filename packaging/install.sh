#!/bin/sh
# Sets up a machine to run berth as a systemd service (docs/deployment.md § 2. Run it under systemd):
#
#   sh packaging/install.sh [--root DIR]
#
# Run it as root, after berth itself is installed. It makes, each only when missing:
#   - the system group and user `berth` (home /var/lib/berth, no login shell);
#   - /var/lib/berth, the state dir: owner berth, mode 0700 (one that exists, or a symlink to a directory,
#     is kept, and only given to berth when someone else owns it);
#   - /etc/berth/ (root:berth, 0750) with a starter berth.yaml (root:berth, 0640) from packaging/berth.yaml;
#     an existing berth.yaml is never touched;
#   - /etc/systemd/system/berth.service from packaging/berth.service. A unit that differs (an older
#     berth's) is replaced, and the previous file is kept as berth.service.bak; local changes belong in
#     a drop-in (systemctl edit berth).
# Then it prints the commands that remain. It runs `systemctl daemon-reload` itself only when the unit
# changed, DIR is / and systemd is running; it never enables or starts the service.
#
# --root DIR works on another system root instead of / (a test's temp dir, an image being built): the
# user and group go to DIR/etc/passwd and DIR/etc/group (useradd and groupadd --root, which need DIR/etc
# to hold passwd, group, shadow, gshadow and login.defs), and every path is under DIR.
#
# Running it again changes nothing and succeeds. Exit status: 0 done, 1 refused or failed, 2 bad arguments.
set -eu
umask 022

me=install.sh
say() { printf '%s: %s\n' "$me" "$*"; }
die() { printf '%s: %s\n' "$me" "$*" >&2; exit 1; }
usage() { echo "usage: sh $0 [--root DIR]"; }

root=/
while [ $# -gt 0 ]; do
  case $1 in
    --root)
      [ $# -ge 2 ] || { echo "$me: --root needs a directory" >&2; usage >&2; exit 2; }
      root=$2
      shift 2
      ;;
    --root=*)
      root=${1#--root=}
      shift
      ;;
    -h | --help)
      usage
      exit 0
      ;;
    *)
      echo "$me: unknown argument: $1" >&2
      usage >&2
      exit 2
      ;;
  esac
done

if [ "$(id -u)" -ne 0 ]; then
  again="sh $0"
  [ "$root" = / ] || again="$again --root $root"
  die "must run as root: it creates the berth user and writes under /etc and /var/lib (run it again as root: $again)"
fi

here=$(cd "$(dirname "$0")" && pwd)
unit_src=$here/berth.service
config_src=$here/berth.yaml
[ -f "$unit_src" ] || die "$unit_src is missing: run the install.sh that ships beside berth.service"
[ -f "$config_src" ] || die "$config_src is missing: run the install.sh that ships beside berth.yaml"

# R is the prefix of every path written: empty for /, else the other root without a trailing slash.
[ -d "$root" ] || die "--root $root: no such directory"
R=$(cd "$root" && pwd -P)
[ "$R" = / ] && R=
if [ -n "$R" ]; then
  [ -f "$R/etc/passwd" ] && [ -f "$R/etc/group" ] || die "--root $root is not a system root: $R/etc/passwd and $R/etc/group must exist"
fi

for tool in useradd groupadd install cmp; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed (Debian: apt-get install passwd coreutils diffutils)"
done

# Runs useradd or groupadd on the chosen root.
on_root() {
  tool=$1
  shift
  if [ -n "$R" ]; then "$tool" --root "$R" "$@"; else "$tool" "$@"; fi
}

# The passwd or group line of a name on the chosen root (empty when there is none).
entry() {
  if [ -n "$R" ]; then
    grep "^$2:" "$R/etc/$1" 2>/dev/null | head -n 1 || true
  else
    getent "$1" "$2" || true
  fi
}

# ---- group and user ----

if [ -n "$(entry group berth)" ]; then
  say "group berth: already there"
else
  on_root groupadd --system berth
  say "group berth: created"
fi
gid=$(entry group berth | cut -d: -f3)
[ -n "$gid" ] || die "group berth: not found after groupadd"

if [ -n "$(entry passwd berth)" ]; then
  say "user berth: already there"
else
  on_root useradd --system --gid berth --home-dir /var/lib/berth --no-create-home \
    --shell /usr/sbin/nologin --comment "berth gateway" berth
  say "user berth: created"
fi
uid=$(entry passwd berth | cut -d: -f3)
[ -n "$uid" ] || die "user berth: not found after useradd"

# ---- the state dir ----

state=$R/var/lib/berth
if [ -d "$state" ]; then
  owner=$(stat -L -c %u:%g "$state")
  if [ "$owner" = "$uid:$gid" ]; then
    say "state dir /var/lib/berth: already there"
  else
    # The directory only: what is inside stays as it is (systemd's StateDirectory= also owns it to berth).
    chown "$uid:$gid" "$state"
    say "state dir /var/lib/berth: owner was $owner, now berth"
  fi
elif [ -e "$state" ] || [ -L "$state" ]; then
  die "$state exists and is not a directory"
else
  mkdir -p "$R/var/lib"
  mkdir -m 0700 "$state"
  chown "$uid:$gid" "$state"
  say "state dir /var/lib/berth: created (owner berth, mode 0700)"
fi

# ---- the config ----

etc=$R/etc/berth
if [ -d "$etc" ]; then
  say "config dir /etc/berth: already there"
elif [ -e "$etc" ] || [ -L "$etc" ]; then
  die "$etc exists and is not a directory"
else
  mkdir -m 0750 "$etc"
  chown "0:$gid" "$etc"
  say "config dir /etc/berth: created (root:berth, mode 0750)"
fi

config=$etc/berth.yaml
if [ -e "$config" ] || [ -L "$config" ]; then
  say "config /etc/berth/berth.yaml: already there, left as it is"
else
  install -m 0640 -o 0 -g "$gid" "$config_src" "$config"
  say "config /etc/berth/berth.yaml: created from the starter (root:berth, mode 0640)"
fi

# ---- the unit ----

unit_dir=$R/etc/systemd/system
unit=$unit_dir/berth.service
unit_changed=no
if [ -f "$unit" ] && cmp -s "$unit_src" "$unit"; then
  say "unit /etc/systemd/system/berth.service: already there"
else
  mkdir -p "$unit_dir"
  # Written beside, then renamed: systemd never reads half a file.
  install -m 0644 -o 0 -g 0 "$unit_src" "$unit.new"
  if [ -e "$unit" ] || [ -L "$unit" ]; then
    mv -f "$unit" "$unit.bak"
    mv -f "$unit.new" "$unit"
    say "unit /etc/systemd/system/berth.service: replaced; the previous one is berth.service.bak (put local changes in: systemctl edit berth)"
  else
    mv -f "$unit.new" "$unit"
    say "unit /etc/systemd/system/berth.service: installed"
  fi
  unit_changed=yes
fi

# ---- what remains ----

reloaded=no
if [ -z "$R" ] && [ "$unit_changed" = yes ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
  systemctl daemon-reload
  reloaded=yes
  say "systemctl daemon-reload: done"
fi
if [ -z "$R" ] && ! command -v berth >/dev/null 2>&1; then
  say "warning: no berth command on PATH yet; the unit runs /usr/bin/env berth (install berth first: docs/deployment.md)"
fi

echo
if [ -n "$R" ]; then
  echo "Installed under $R. On that system, once it runs:"
else
  echo "Next:"
fi
echo "  1. Describe your apps in /etc/berth/berth.yaml, then check it as the service will read it:"
echo "       runuser -u berth -- berth check --config /etc/berth/berth.yaml"
if [ "$reloaded" = yes ]; then
  echo "  2. Start berth now and at every boot:"
  echo "       systemctl enable --now berth"
else
  echo "  2. Start berth now and at every boot:"
  echo "       systemctl daemon-reload && systemctl enable --now berth"
fi
echo "  3. Look:"
echo "       systemctl status berth"
echo "       berth status --config /etc/berth/berth.yaml"
echo "       curl http://127.0.0.1/_berth/health"
