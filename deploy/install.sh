#!/bin/sh
# Install (or upgrade) rpo_guard on a Debian 12 / Ubuntu 24.04 Asterisk server, from a clone.
#
#   sudo deploy/install.sh            # run from anywhere inside the clone, as root
#
# What it does (every step is safe to run again; a second run is an upgrade):
#   * a virtualenv under $PREFIX (/opt/rpo-guard) with this clone pip-installed into it
#     (Debian's system Python refuses `pip install`: PEP 668);
#   * links $BIN_DIR/rpo-guard and $BIN_DIR/rpo-guard-agi (/usr/local/bin, where the
#     systemd units and the shipped dialplan look) to the virtualenv's scripts;
#   * the system user and group $SERVICE_USER (rpo-guard), which owns the data and runs
#     init, the imports, the watcher and the FastAGI server; Asterisk's user
#     ($ASTERISK_USER, asterisk) is added to that group, so the AGI can read the register
#     and append to the audit log;
#   * $CONF_DIR (/etc/rpo-guard, root:rpo-guard 0750) with rpo-guard.conf from
#     deploy/rpo-guard.conf.sample (root:rpo-guard 0640) unless one exists: an existing
#     configuration is never overwritten (the new sample is put beside it);
#   * $DATA_DIR (/var/lib/rpo-guard) and $LOG_DIR (/var/log/rpo-guard): rpo-guard:rpo-guard
#     2770 (setgid: files made inside get the group); the failure log created 0660;
#   * `rpo-guard init` as $SERVICE_USER (creates the databases that are missing, never
#     changes existing ones);
#   * the systemd units into $UNIT_DIR (/etc/systemd/system) and the logrotate file into
#     $LOGROTATE_DIR (/etc/logrotate.d); `systemctl daemon-reload` when systemd runs.
#     Nothing is enabled or started: see docs/sysadmin.md.
#
# Settings (environment): PREFIX BIN_DIR CONF_DIR DATA_DIR LOG_DIR UNIT_DIR LOGROTATE_DIR
# SERVICE_USER ASTERISK_USER PYTHON (default /usr/bin/python3, the distribution's)
# PIP_ARGS (extra `pip install` arguments, e.g. "--no-index --find-links /srv/wheels" on a
# server without access to PyPI). After an upgrade run `rpo-guard migrate` (docs/sysadmin.md).
set -eu
umask 022

PREFIX=${PREFIX:-/opt/rpo-guard}
BIN_DIR=${BIN_DIR:-/usr/local/bin}
CONF_DIR=${CONF_DIR:-/etc/rpo-guard}
DATA_DIR=${DATA_DIR:-/var/lib/rpo-guard}
LOG_DIR=${LOG_DIR:-/var/log/rpo-guard}
UNIT_DIR=${UNIT_DIR:-/etc/systemd/system}
LOGROTATE_DIR=${LOGROTATE_DIR:-/etc/logrotate.d}
SERVICE_USER=${SERVICE_USER:-rpo-guard}
ASTERISK_USER=${ASTERISK_USER:-asterisk}
PYTHON=${PYTHON:-/usr/bin/python3}
PIP_ARGS=${PIP_ARGS:-}

SRC=$(cd "$(dirname "$0")/.." && pwd)
say() { printf 'install: %s\n' "$*"; }
die() { printf 'install: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (it creates a system user, /etc/rpo-guard and /var/lib/rpo-guard)"
[ -f "$SRC/setup.cfg" ] && [ -d "$SRC/rpo_guard" ] || die "$SRC is not an rpo_guard clone"
[ -x "$PYTHON" ] || die "$PYTHON not found (apt-get install python3 python3-venv)"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || die "$PYTHON is older than 3.11"
"$PYTHON" -c 'import ensurepip, venv' 2>/dev/null \
  || die "$PYTHON cannot make a virtualenv (apt-get install python3-venv)"

# 1. the virtualenv and the package
if [ ! -x "$PREFIX/bin/python" ]; then
  say "virtualenv $PREFIX"
  "$PYTHON" -m venv "$PREFIX"
fi
say "pip install $SRC into $PREFIX"
# shellcheck disable=SC2086  # PIP_ARGS is a list of words
"$PREFIX/bin/python" -m pip install --quiet --disable-pip-version-check $PIP_ARGS "$SRC"
for script in rpo-guard rpo-guard-agi; do
  [ -e "$PREFIX/bin/$script" ] || die "$PREFIX/bin/$script missing after pip install"
  mkdir -p "$BIN_DIR"
  ln -sfn "$PREFIX/bin/$script" "$BIN_DIR/$script"
done
say "$BIN_DIR/rpo-guard, $BIN_DIR/rpo-guard-agi -> $PREFIX/bin ($("$BIN_DIR/rpo-guard" --version))"

# 2. the account and the group
if ! getent group "$SERVICE_USER" >/dev/null; then
  groupadd --system "$SERVICE_USER"
fi
if ! getent passwd "$SERVICE_USER" >/dev/null; then
  useradd --system --gid "$SERVICE_USER" --home-dir "$DATA_DIR" --no-create-home \
    --shell /usr/sbin/nologin --comment "rpo_guard register and audit log" "$SERVICE_USER"
  say "system user $SERVICE_USER created"
fi
if getent passwd "$ASTERISK_USER" >/dev/null; then
  if id -nG "$ASTERISK_USER" | tr ' ' '\n' | grep -qx "$SERVICE_USER"; then :; else
    usermod -a -G "$SERVICE_USER" "$ASTERISK_USER"
    say "$ASTERISK_USER added to group $SERVICE_USER (restart Asterisk so it takes the group)"
  fi
else
  say "warning: no user $ASTERISK_USER: install Asterisk first, or rerun with ASTERISK_USER=<Asterisk's user>;"
  say "         until that user is in group $SERVICE_USER every call is refused (BLOCK error)"
fi

# 3. folders
install -d -m 0750 -o root -g "$SERVICE_USER" "$CONF_DIR"
install -d -m 2770 -o "$SERVICE_USER" -g "$SERVICE_USER" "$DATA_DIR" "$LOG_DIR"
# an existing folder keeps its contents; bring its owner and mode to the same state
chown "$SERVICE_USER:$SERVICE_USER" "$DATA_DIR" "$LOG_DIR"
chmod 2770 "$DATA_DIR" "$LOG_DIR"
if [ ! -e "$LOG_DIR/failures.log" ]; then
  install -m 0660 -o "$SERVICE_USER" -g "$SERVICE_USER" /dev/null "$LOG_DIR/failures.log"
fi

# 4. the configuration: the sample with this install's paths and group
sample=$(mktemp)
trap 'rm -f "$sample"' EXIT
sed -e "s|^data_dir = .*|data_dir = $DATA_DIR|" \
    -e "s|^log_file = .*|log_file = $LOG_DIR/failures.log|" \
    -e "s|^group = .*|group = $SERVICE_USER|" \
    "$SRC/deploy/rpo-guard.conf.sample" > "$sample"
if [ -e "$CONF_DIR/rpo-guard.conf" ]; then
  install -m 0640 -o root -g "$SERVICE_USER" "$sample" "$CONF_DIR/rpo-guard.conf.sample"
  say "$CONF_DIR/rpo-guard.conf kept; the new sample is $CONF_DIR/rpo-guard.conf.sample"
else
  install -m 0640 -o root -g "$SERVICE_USER" "$sample" "$CONF_DIR/rpo-guard.conf"
  say "$CONF_DIR/rpo-guard.conf written from the sample: read it, then set your brands' sources"
fi

# 5. the databases (created when missing; existing ones are never changed here)
runuser -u "$SERVICE_USER" -- env RPO_GUARD_CONFIG="$CONF_DIR/rpo-guard.conf" "$BIN_DIR/rpo-guard" init

# 6. systemd units and log rotation
mkdir -p "$UNIT_DIR" "$LOGROTATE_DIR"
for unit in "$SRC"/systemd/*.service "$SRC"/systemd/*.timer; do
  sed -e "s|/usr/local/bin/|$BIN_DIR/|g" -e "s|/etc/rpo-guard|$CONF_DIR|g" \
      -e "s|/var/lib/rpo-guard|$DATA_DIR|g" -e "s|/var/log/rpo-guard|$LOG_DIR|g" \
      -e "s|^User=rpo-guard|User=$SERVICE_USER|" -e "s|^Group=rpo-guard|Group=$SERVICE_USER|" \
      "$unit" > "$sample"
  install -m 0644 "$sample" "$UNIT_DIR/$(basename "$unit")"
done
sed -e "s|/var/log/rpo-guard|$LOG_DIR|g" -e "s| rpo-guard rpo-guard| $SERVICE_USER $SERVICE_USER|" \
    "$SRC/deploy/logrotate" > "$sample"
install -m 0644 "$sample" "$LOGROTATE_DIR/rpo-guard"
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
  systemctl daemon-reload
  say "systemd units installed; enable what you use (docs/sysadmin.md), e.g."
  say "  systemctl enable --now rpo-guard-watch.service   (or rpo-guard-sync.timer)"
  say "  systemctl enable --now rpo-guard-fastagi.service (busy call centres)"
  say "after an upgrade: rpo-guard migrate, then systemctl restart the enabled units"
else
  say "systemd units copied to $UNIT_DIR (systemd is not running here: nothing reloaded)"
fi
say "done: check with  runuser -u $SERVICE_USER -- rpo-guard status"
