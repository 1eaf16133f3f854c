#!/usr/bin/env bash
# A real single-node Slurm cluster on this machine, for tests (docs/cluster.md).
#
#   cluster/local_slurm.sh start    start munged, slurmctld and slurmd on 127.0.0.1 (idempotent) and
#                                   wait until the node is idle
#   cluster/local_slurm.sh stop     cancel the jobs, stop the daemons; the logs stay
#   cluster/local_slurm.sh status   print the daemons' state, sinfo and squeue (exit 0 when up, 3 when not)
#   cluster/local_slurm.sh env      print the exports a caller needs: eval "$(cluster/local_slurm.sh env)"
#
# Everything lives under ${FLAME_SLURM_DIR:-/tmp/flame-slurm}: etc/ (slurm.conf, munge.key), run/
# (pid files, munge socket), state/, spool/, tmp/, log/. Settings, all optional:
#   FLAME_SLURM_DIR            that directory
#   FLAME_SLURM_PORT           slurmctld's port (default 16817, clear of a system Slurm on 6817); slurmd listens on the next one
#   FLAME_SLURM_CPUS           CPUs the node declares (default: this machine's count, at least 2, so a
#                              2-task job fits on a 2-core machine; tasks then share cores)
#   FLAME_SLURM_START_TIMEOUT  seconds `start` waits for the node to be idle (default 60)
# Needs root (the daemons run as root: SlurmUser=root) and Debian's slurmctld, slurmd, slurm-client
# and munge packages. Exit status: 0 done, 1 a daemon failed (its log's tail is printed), 2 not root
# or Slurm/munge missing, 3 `status` found the cluster down.
set -euo pipefail

export PATH="$PATH:/usr/sbin:/sbin"
readonly slurm_dir=${FLAME_SLURM_DIR:-/tmp/flame-slurm}
readonly conf=$slurm_dir/etc/slurm.conf
readonly ctld_port=${FLAME_SLURM_PORT:-16817}
readonly slurmd_port=$((ctld_port + 1))
readonly start_timeout=${FLAME_SLURM_START_TIMEOUT:-60}
readonly munge_socket=$slurm_dir/run/munge.socket
readonly system_munge_socket=/run/munge/munge.socket.2
node=$(hostname -s)
readonly node

die() {  # die STATUS MESSAGE...
  local status=$1
  shift
  echo "local_slurm: error: $*" >&2
  exit "$status"
}
log_tail() {  # prints the last lines of each log named, for a failure message
  local file
  for file in "$@"; do
    [ -s "$file" ] || continue
    echo "---- last lines of $file ----" >&2
    tail -n 25 "$file" >&2
  done
}

check_prerequisites() {
  [ "$(id -u)" -eq 0 ] || die 2 "must run as root (the daemons run with SlurmUser=root); run it with sudo"
  local missing=() tool
  for tool in slurmctld slurmd sinfo squeue sbatch srun scontrol scancel munged mungekey munge unmunge; do
    command -v "$tool" >/dev/null || missing+=("$tool")
  done
  ((${#missing[@]} == 0)) ||
    die 2 "missing ${missing[*]}: install Debian's slurmctld slurmd slurm-client munge (scripts/setup.sh does)"
}

# alive NAME: the daemon whose pid file is run/NAME.pid runs: its command name is checked (a reused
# pid does not count) and so is its state (an exited daemon that nobody reaped is a zombie, "Z").
alive() {
  local pid_file=$slurm_dir/run/$1.pid pid state
  [ -s "$pid_file" ] || return 1
  pid=$(<"$pid_file")
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$1" ] || return 1
  state=$(sed 's/.*) \([A-Za-z]\).*/\1/' "/proc/$pid/stat" 2>/dev/null)
  [ -n "$state" ] && [ "$state" != Z ]
}
pid_of() { cat "$slurm_dir/run/$1.pid"; }

# The munge socket the cluster uses: our own once started, else the system one.
munge_socket_in_use() {
  if [ -f "$slurm_dir/run/munge.system" ]; then echo "$system_munge_socket"; else echo "$munge_socket"; fi
}
munge_works() { munge -n -S "$1" 2>/dev/null | unmunge -S "$1" >/dev/null 2>&1; }

start_munge() {
  if alive munged && munge_works "$munge_socket"; then return; fi
  if [ -f "$slurm_dir/run/munge.system" ] && munge_works "$system_munge_socket"; then return; fi
  rm -f "$slurm_dir/run/munge.system"
  [ -s "$slurm_dir/etc/munge.key" ] || mungekey --create --keyfile="$slurm_dir/etc/munge.key"
  chmod 0600 "$slurm_dir/etc/munge.key"
  if setsid munged --force --socket="$munge_socket" --key-file="$slurm_dir/etc/munge.key" \
    --pid-file="$slurm_dir/run/munged.pid" --log-file="$slurm_dir/log/munged.log" \
    --seed-file="$slurm_dir/etc/munged.seed" </dev/null >>"$slurm_dir/log/munged.log" 2>&1; then
    local i
    for ((i = 0; i < 50; ++i)); do
      munge_works "$munge_socket" && return
      sleep 0.1
    done
  fi
  # Our own munged could not start (a restricted /tmp, say): fall back to the system's daemon.
  if munge_works "$system_munge_socket"; then
    echo "local_slurm: own munged did not start (see $slurm_dir/log/munged.log); using $system_munge_socket"
    touch "$slurm_dir/run/munge.system"
    return
  fi
  log_tail "$slurm_dir/log/munged.log"
  die 1 "munged did not start on $munge_socket and no system munged answers on $system_munge_socket"
}

# The plugin directory holding mpi_pmix.so, if any (Debian: /usr/lib/<triplet>/slurm-wlm).
pmix_plugin_present() {
  local candidate
  for candidate in /usr/lib/*/slurm-wlm /usr/lib/slurm-wlm /usr/lib/*/slurm /usr/lib64/slurm /usr/lib/slurm \
    /usr/local/lib/slurm; do
    [ -e "$candidate/mpi_pmix.so" ] && return 0
  done
  return 1
}

write_conf() {
  # slurmd -C reports this machine's layout and memory, as slurmd itself will measure them.
  local hardware cpus real_memory mpi_default=none
  hardware=$(slurmd -C | head -n 1)
  cpus=$(sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' <<<"$hardware")
  real_memory=$(sed -n 's/.* RealMemory=\([0-9]*\).*/\1/p' <<<"$hardware")
  if [ -z "$cpus" ] || [ -z "$real_memory" ]; then
    die 1 "could not read the CPU count and memory from 'slurmd -C': $hardware"
  fi
  cpus=${FLAME_SLURM_CPUS:-$cpus}
  ((cpus >= 2)) || cpus=2
  pmix_plugin_present && mpi_default=pmix
  cat >"$conf" <<EOF
# Generated by cluster/local_slurm.sh: a single-node cluster on 127.0.0.1, for tests.
ClusterName=flame-local
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$(munge_socket_in_use)
StateSaveLocation=$slurm_dir/state
SlurmdSpoolDir=$slurm_dir/spool
TmpFS=$slurm_dir/tmp
SlurmctldPidFile=$slurm_dir/run/slurmctld.pid
SlurmdPidFile=$slurm_dir/run/slurmd.pid
SlurmctldLogFile=$slurm_dir/log/slurmctld.log
SlurmdLogFile=$slurm_dir/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups: processes are tracked through /proc and tasks are not bound to cores.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
# The node declares FLAME_SLURM_CPUS (at least 2) whatever the hardware has: tasks may share cores.
SlurmdParameters=config_overrides
MpiDefault=$mpi_default
JobRequeue=1
ReturnToService=2
KillWait=5
# A finished job stays in scontrol's view for 5 s at least (no accounting database here). At 5 s or
# less, sbatch --wait keeps polling every 2 s instead of backing off to 8 s and more.
MinJobAge=5
InactiveLimit=0
MailProg=/bin/true
NodeName=$node NodeAddr=127.0.0.1 NodeHostname=$node CPUs=$cpus RealMemory=$real_memory State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=UNLIMITED State=UP OverSubscribe=YES
EOF
}

# node_state: the node's state as sinfo prints it ("idle", "unknown", "drained", ...), or nothing.
node_state() { SLURM_CONF=$conf timeout 10 sinfo -h -N -n "$node" -o %T 2>/dev/null | head -n 1 || true; }

start() {
  check_prerequisites
  # Root runs daemons from here and writes munge's key here: a directory another user created (in a
  # shared /tmp) could hold their files, so everything in it must be root's.
  if [ -e "$slurm_dir" ]; then
    [ "$(stat -c %u "$slurm_dir")" -eq 0 ] && ! find "$slurm_dir" -maxdepth 2 ! -user 0 -print -quit | grep -q . ||
      die 2 "$slurm_dir exists but is not root's alone (owner $(stat -c %U "$slurm_dir")); remove it or set FLAME_SLURM_DIR"
  fi
  mkdir -p "$slurm_dir"/{etc,run,state,spool,tmp,log}
  chmod 0755 "$slurm_dir" "$slurm_dir/run"
  if alive slurmctld && alive slurmd; then
    case $(node_state) in
      idle | mixed | allocated | completing)
        echo "local_slurm: already running ($slurm_dir), node $node $(node_state)"
        return
        ;;
    esac
  fi
  start_munge
  if ! alive slurmctld && ! alive slurmd; then
    # A fresh cluster: new configuration; no jobs, spool or step directories (PMIx's, named by job id)
    # left from an earlier one; the old logs kept aside.
    write_conf
    rm -rf "${slurm_dir:?}/state/"* "${slurm_dir:?}/spool/"* "${slurm_dir:?}/tmp/"*
    local log
    for log in slurmctld slurmd; do
      [ -f "$slurm_dir/log/$log.log" ] && mv -f "$slurm_dir/log/$log.log" "$slurm_dir/log/$log.log.previous"
    done
  fi
  alive slurmctld ||
    SLURM_CONF=$conf setsid slurmctld -c </dev/null >>"$slurm_dir/log/slurmctld.log" 2>&1 ||
    { log_tail "$slurm_dir/log/slurmctld.log"; die 1 "slurmctld did not start"; }
  alive slurmd || SLURM_CONF=$conf setsid slurmd -N "$node" </dev/null >>"$slurm_dir/log/slurmd.log" 2>&1 ||
    { log_tail "$slurm_dir/log/slurmd.log"; die 1 "slurmd did not start"; }

  local deadline=$((SECONDS + start_timeout)) state=""
  while ((SECONDS < deadline)); do
    state=$(node_state)
    case $state in
      idle) echo "local_slurm: up ($slurm_dir), node $node idle; eval \"\$($0 env)\" to use it"; return ;;
      *drain* | *invalid* | *down*) break ;;
    esac
    # A daemon that exited (a port in use, a bad setting) will not come back: stop waiting.
    if ((SECONDS > deadline - start_timeout + 2)) && ! { alive slurmctld && alive slurmd; }; then break; fi
    sleep 0.5
  done
  local daemon daemons=""
  for daemon in slurmctld slurmd; do
    if alive "$daemon"; then daemons+=" $daemon running"; else daemons+=" $daemon dead"; fi
  done
  echo "local_slurm: node $node is '${state:-not listed}' after $((SECONDS - deadline + start_timeout)) s;$daemons" >&2
  SLURM_CONF=$conf timeout 10 sinfo -R >&2 2>/dev/null || true
  log_tail "$slurm_dir/log/slurmctld.log" "$slurm_dir/log/slurmd.log" "$slurm_dir/log/munged.log"
  die 1 "the node did not become idle (FLAME_SLURM_START_TIMEOUT=${start_timeout} s); '$0 stop' cleans up"
}

# stop_daemon NAME: TERM, then KILL after 10 s, the daemon of run/NAME.pid.
stop_daemon() {
  alive "$1" || return 0
  local pid i
  pid=$(pid_of "$1")
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 100; ++i)); do
    alive "$1" || return 0
    sleep 0.1
  done
  echo "local_slurm: $1 ($pid) ignored SIGTERM for 10 s; killing it" >&2
  kill -KILL "$pid" 2>/dev/null || true
}

# kill_tree PID: SIGKILL to PID and all its descendants, children first.
kill_tree() {
  local stat fields
  for stat in /proc/[0-9]*/stat; do
    # "pid (comm) state ppid ...": the parent is the second field after the command name.
    read -ra fields <<<"$(sed 's/.*) //' "$stat" 2>/dev/null)" || continue
    [ "${fields[1]:-}" = "$1" ] && kill_tree "$(basename "$(dirname "$stat")")"
  done
  kill -KILL "$1" 2>/dev/null || true
}

stop() {
  check_prerequisites
  if alive slurmctld; then
    # Cancel the jobs first so that no job step outlives the daemons.
    local jobs
    jobs=$(SLURM_CONF=$conf timeout 10 squeue -h -o %i 2>/dev/null || true)
    if [ -n "$jobs" ]; then
      # shellcheck disable=SC2086  # one job id per word
      SLURM_CONF=$conf timeout 10 scancel $jobs 2>/dev/null || true
      local deadline=$((SECONDS + 15))
      while ((SECONDS < deadline)) && [ -n "$(SLURM_CONF=$conf timeout 10 squeue -h -o %i 2>/dev/null)" ]; do
        sleep 0.5
      done
    fi
  fi
  stop_daemon slurmd
  stop_daemon slurmctld
  # Job steps still alive (a job that ignored the cancel) were started by this cluster's slurmd: its
  # environment, which they inherit, names this slurm.conf.
  local proc pid
  for proc in /proc/[0-9]*; do
    pid=${proc#/proc/}
    [ "$(cat "$proc/comm" 2>/dev/null)" = slurmstepd ] || continue
    { tr '\0' '\n' <"$proc/environ"; } 2>/dev/null | grep -qxF "SLURM_CONF=$conf" || continue
    echo "local_slurm: killing leftover slurmstepd $pid and its tasks" >&2
    kill_tree "$pid"
  done
  stop_daemon munged
  rm -f "$slurm_dir/run/munge.system"
  echo "local_slurm: stopped; logs in $slurm_dir/log"
}

status() {
  local daemon up=0
  for daemon in munged slurmctld slurmd; do
    if alive "$daemon"; then
      echo "$daemon: running (pid $(pid_of "$daemon"))"
    elif [ "$daemon" = munged ] && [ -f "$slurm_dir/run/munge.system" ]; then
      echo "munged: the system's, on $system_munge_socket"
    else
      echo "$daemon: not running"
      up=3
    fi
  done
  if ((up == 0)); then
    SLURM_CONF=$conf timeout 10 sinfo || up=3
    SLURM_CONF=$conf timeout 10 squeue || up=3
  fi
  return "$up"
}

case ${1:-} in
  start) start ;;
  stop) stop ;;
  status) status ;;
  env)
    echo "export SLURM_CONF=$conf"
    echo "export FLAME_SLURM_DIR=$slurm_dir"
    ;;
  *)
    echo "usage: $0 start|stop|status|env" >&2
    exit 2
    ;;
esac
