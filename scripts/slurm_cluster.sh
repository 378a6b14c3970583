#!/usr/bin/env bash
# A real single-node SLURM on localhost, for testing the slurm profile without a cluster.
#
#   scripts/slurm_cluster.sh [start]   install (Debian packages, if missing), configure, start; idempotent
#   scripts/slurm_cluster.sh stop      scancel every job, then stop slurmd, slurmctld and munged
#   scripts/slurm_cluster.sh remove    stop, then undo start: purge the packages start installed, delete the
#                                      config and state it wrote (the machine as start found it)
#   scripts/slurm_cluster.sh status    exit 0 when the node answers and is usable
#
# Why remove matters: with the SLURM client installed and no controller answering, every `snakemake` call waits
# ~10 s, because snakemake-executor-plugin-slurm runs `scontrol show config` (timeout 10 s) when it is imported,
# and snakemake imports every installed executor plugin at start-up. A run that installed the packages removes them.
#
# Plain background daemons, no systemd or cgroups (ProctrackType=proctrack/linuxproc, TaskPlugin=task/none).
# No slurmdbd: accounting is off, so clients must query job states with squeue
# (snakemake-executor-plugin-slurm: `--slurm-status-command squeue`, and `--slurm-no-account`).
# Needs root (apt-get, /etc/slurm, daemons running as root / munge).
set -euo pipefail

CONF_DIR=/etc/slurm
STATE_DIR=${SLURM_STATE_DIR:-/var/lib/dynamax-slurm}
PARTITION=${SLURM_PARTITION_NAME:-main}
NODE=$(hostname -s)

MUNGE_PID=/run/munge/munged.pid
# Packages that start installed (absent: it installed none), for remove.
INSTALLED=$STATE_DIR/installed-packages
MARKER="# Written by scripts/slurm_cluster.sh"

log() { echo "[slurm_cluster] $*" >&2; }

# Daemons are found and stopped through their pid files: other processes of the same name are not ours.
running() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
stop_pid() {
    running "$1" || return 0
    kill "$(cat "$1")" 2>/dev/null || true
    for _ in $(seq 1 40); do running "$1" || return 0; sleep 0.25; done
    kill -9 "$(cat "$1")" 2>/dev/null || true
}

install_packages() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
        && command -v munged >/dev/null; then
        return
    fi
    log "installing slurm-wlm and munge with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    local before status=0
    before=$(installed_packages)
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurm-wlm slurm-client munge >/dev/null || status=$?
    # Recorded even after a failed install: remove purges whatever did get installed.
    mkdir -p "$STATE_DIR"
    comm -13 <(echo "$before") <(installed_packages) >>"$INSTALLED"
    return "$status"
}

installed_packages() {
    dpkg-query -W -f='${Status} ${Package}\n' | awk '$3 == "installed" {print $4}' | sort
}

write_config() {
    local cpus mem_mb
    cpus=$(nproc)
    # Leave 1 GiB to the system; SLURM rejects a node that reports less memory than configured.
    mem_mb=$(( $(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo) - 1024 ))
    mkdir -p "$CONF_DIR" "$STATE_DIR"/{ctld,d,log}
    cat >"$CONF_DIR/slurm.conf.new" <<EOF
$MARKER: single node on localhost, no accounting.
ClusterName=dynamax
SlurmctldHost=${NODE}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=${STATE_DIR}/ctld
SlurmdSpoolDir=${STATE_DIR}/d
SlurmctldPidFile=${STATE_DIR}/slurmctld.pid
SlurmdPidFile=${STATE_DIR}/slurmd.pid
SlurmctldLogFile=${STATE_DIR}/log/slurmctld.log
SlurmdLogFile=${STATE_DIR}/log/slurmd.log
# No systemd or cgroups in containers: track processes through /proc, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# A job asking for more than the node has is rejected at submission instead of pending forever.
EnforcePartLimits=ALL
# A job without --mem would otherwise take the whole node's memory.
DefMemPerCPU=1024
# Finished jobs stay visible to squeue this long (the executor plugin polls with squeue).
MinJobAge=600
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=${NODE} NodeAddr=127.0.0.1 CPUs=${cpus} RealMemory=${mem_mb} State=UNKNOWN
PartitionName=${PARTITION} Nodes=${NODE} Default=YES MaxTime=INFINITE State=UP
EOF
    if ! cmp -s "$CONF_DIR/slurm.conf.new" "$CONF_DIR/slurm.conf" 2>/dev/null; then
        mv "$CONF_DIR/slurm.conf.new" "$CONF_DIR/slurm.conf"
        CONFIG_CHANGED=1
    else
        rm -f "$CONF_DIR/slurm.conf.new"
    fi
}

start_munge() {
    running "$MUNGE_PID" && return
    [ -s /etc/munge/munge.key ] || { mungekey --create --force 2>/dev/null || \
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none; }
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    runuser -u munge -- /usr/sbin/munged
}

node_ready() {
    local state
    state=$(sinfo -h -N -n "$NODE" -o %t 2>/dev/null | head -1) || return 1
    case "$state" in idle*|mix*|alloc*) return 0 ;; *) return 1 ;; esac
}

start() {
    CONFIG_CHANGED=0
    install_packages
    write_config
    start_munge
    if [ "$CONFIG_CHANGED" = 1 ]; then
        stop_daemons
    fi
    running "$STATE_DIR/slurmctld.pid" || slurmctld
    running "$STATE_DIR/slurmd.pid" || slurmd
    for _ in $(seq 1 60); do
        if node_ready; then
            log "cluster up: node $NODE, partition $PARTITION ($(nproc) CPUs)"
            return 0
        fi
        # A node left DOWN by an earlier unclean stop comes back on request.
        scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true
        sleep 0.5
    done
    log "node $NODE did not become ready; see $STATE_DIR/log/"
    sinfo -N >&2 || true
    return 1
}

stop_daemons() {
    stop_pid "$STATE_DIR/slurmd.pid"
    stop_pid "$STATE_DIR/slurmctld.pid"
}

stop() {
    # A killed snakemake may leave jobs queued: cancel them before the controller goes away.
    if running "$STATE_DIR/slurmctld.pid"; then
        scancel --full --user="$(id -un)" 2>/dev/null || true
    fi
    stop_daemons
    stop_pid "$MUNGE_PID"
    log "stopped"
}

remove() {
    stop
    if head -1 "$CONF_DIR/slurm.conf" 2>/dev/null | grep -qF "$MARKER"; then
        rm -f "$CONF_DIR/slurm.conf"
    fi
    if [ -s "$INSTALLED" ]; then
        log "purging the packages start installed: $(tr '\n' ' ' <"$INSTALLED")"
        DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq $(cat "$INSTALLED") >/dev/null
    fi
    rm -rf "$STATE_DIR"
    log "removed"
}

case "${1:-start}" in
    start) start ;;
    stop) stop ;;
    remove) remove ;;
    status) node_ready ;;
    *) echo "usage: $0 [start|stop|remove|status]" >&2; exit 2 ;;
esac
