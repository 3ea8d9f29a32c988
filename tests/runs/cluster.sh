#!/usr/bin/env bash
# A real SLURM cluster on this machine for the tests: slurmctld, one slurmd per simulated node (node1..nodeN, all
# 127.0.0.1), slurmdbd + MariaDB for accounting (sacct, which submitit needs). As root, no systemd.
#   cluster.sh install install the Debian packages that are missing (munge, SLURM's daemons, MariaDB)
#   cluster.sh start   install, write configs, start the daemons not running, wait for idle nodes
#   cluster.sh stop    cancel jobs, stop exactly the daemons `start` started (pids recorded), newest first
# Env: SLURM_CI_NODES (2), SLURM_CI_CPUS (4 per node), SLURM_CI_MEM_MB (6000 per node), SLURM_CI_GPUS (1 fake per node)
set -euo pipefail
NODES=${SLURM_CI_NODES:-2} CPUS=${SLURM_CI_CPUS:-4} MEM=${SLURM_CI_MEM_MB:-6000} GPUS=${SLURM_CI_GPUS:-1}
RUN=/run/higgs-ds-slurm STATE=/var/lib/higgs-ds-slurm LOG=/var/log/higgs-ds-slurm CONF=/etc/slurm
STARTED=$RUN/started
log() { echo "[cluster $(date +%T)] $*" >&2; }
die() { log "ERROR: $*"; for f in "$LOG"/*.log; do [ -f "$f" ] && { echo "--- $f" >&2; tail -n 15 "$f" >&2; }; done; exit 1; }
alive() { local p; p=$(cat "$1" 2>/dev/null) || return 1; [ -n "$p" ] && [ "$(cat /proc/"$p"/comm 2>/dev/null)" = "$2" ]; }
record() { grep -qxF "$1 $2" "$STARTED" 2>/dev/null || echo "$1 $2" >>"$STARTED"; }
wait_for() { local t=$1 what=$2; shift 2; for _ in $(seq 1 $((t * 5))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done; die "timed out waiting for $what"; }
port_open() { (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null; }

stop() {
  [ -f "$STARTED" ] || { log "nothing to stop"; return 0; }
  if scontrol ping >/dev/null 2>&1; then
    ids=$(squeue -h -o %A 2>/dev/null | sort -u)
    [ -n "$ids" ] && { scancel $ids 2>/dev/null || true; for _ in $(seq 1 50); do [ -z "$(squeue -h 2>/dev/null)" ] && break; sleep 0.2; done; }
  fi
  tac "$STARTED" | while read -r name pidfile; do
    comm=${name%%-*}; pid=$(cat "$pidfile" 2>/dev/null) || continue
    [ "$(cat /proc/"$pid"/comm 2>/dev/null)" = "$comm" ] || continue
    log "stopping $name ($pid)"; kill -TERM "$pid"
    for _ in $(seq 1 100); do [ -d /proc/"$pid" ] || break; sleep 0.2; done
    [ -d /proc/"$pid" ] && kill -KILL "$pid"; rm -f "$pidfile"
  done
  rm -f "$STARTED"
}

install() {
  [ "$(id -u)" = 0 ] || die "must run as root"
  pkgs=(munge slurm-client slurmctld slurmd slurmdbd mariadb-server) missing=()
  for p in "${pkgs[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p"); done
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    policy=0; [ -e /usr/sbin/policy-rc.d ] || { printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; policy=1; }
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq  # its own line: in an && list, set -e would let a failed update skip the install silently
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    if [ "$policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi  # an image's own policy-rc.d stays
  fi
}

start() {
  install
  mkdir -p "$RUN" "$STATE/ctld" "$STATE/dev" "$LOG"; touch "$STARTED"
  for i in $(seq 1 "$NODES"); do getent hosts "node$i" >/dev/null || echo "127.0.0.1 node$i  # higgs-ds tests" >>/etc/hosts; done
  [ -s /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key
  chown munge:munge /etc/munge/munge.key; chmod 0400 /etc/munge/munge.key
  mkdir -p /run/munge; chown munge:munge /run/munge
  if ! (munge -n | unmunge) >/dev/null 2>&1; then
    runuser -u munge -- /usr/sbin/munged; record munged /run/munge/munged.pid
    wait_for 10 munged sh -c 'munge -n | unmunge'
  fi
  nodelist="node[1-$NODES]"; [ "$NODES" = 1 ] && nodelist=node1
  mkdir -p "$CONF"
  { cat <<EOC
ClusterName=higgsci
SlurmctldHost=localhost
SlurmUser=slurm
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# a requeued job waits cred_expire + 1 s before it may start again (120 s by default): it must not reuse the
# revoked credential of its last run, and SLURM refuses a new one issued in the same second as the revocation
AuthInfo=cred_expire=15
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
ReturnToService=2
SlurmdParameters=config_overrides
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d/%n
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd-%n.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd-%n.log
InactiveLimit=0
KillWait=5
MinJobAge=300
Waittime=0
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
JobCompType=jobcomp/none
EOC
    gres=""
    if [ "$GPUS" -gt 0 ]; then echo "GresTypes=gpu"; echo "AccountingStorageTRES=gres/gpu"; gres=" Gres=gpu:$GPUS"; fi
    for i in $(seq 1 "$NODES"); do
      echo "NodeName=node$i NodeHostname=localhost NodeAddr=127.0.0.1 Port=$((17100 + i)) CPUs=$CPUS Boards=1 SocketsPerBoard=1 CoresPerSocket=$CPUS ThreadsPerCore=1 RealMemory=$MEM$gres State=UNKNOWN"
    done
    echo "PartitionName=debug Nodes=$nodelist Default=YES MaxTime=INFINITE State=UP"
  } >"$CONF/slurm.conf"
  : >"$CONF/gres.conf"
  if [ "$GPUS" -gt 0 ]; then  # fake GPUs: char devices like /dev/null, so SLURM hands out CUDA_VISIBLE_DEVICES
    for i in $(seq 1 "$NODES"); do
      for g in $(seq 0 $((GPUS - 1))); do [ -c "$STATE/dev/n${i}gpu$g" ] || mknod -m 0666 "$STATE/dev/n${i}gpu$g" c 1 3; done
      echo "NodeName=node$i Name=gpu File=$STATE/dev/n${i}gpu[0-$((GPUS - 1))]" >>"$CONF/gres.conf"
    done
  fi
  chown -R slurm:slurm "$STATE/ctld" "$LOG" "$RUN"
  for i in $(seq 1 "$NODES"); do mkdir -p "$STATE/d/node$i"; done

  mkdir -p /run/mysqld; chown mysql:mysql /run/mysqld
  if ! mariadb-admin --socket=/run/mysqld/mysqld.sock ping >/dev/null 2>&1; then
    [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
    setsid /usr/sbin/mariadbd --user=mysql --skip-networking --socket=/run/mysqld/mysqld.sock \
      --pid-file=/run/mysqld/mysqld.pid --innodb-buffer-pool-size=64M >"$LOG/mariadb.log" 2>&1 </dev/null &
    wait_for 30 mariadb mariadb-admin --socket=/run/mysqld/mysqld.sock ping
    record mariadbd /run/mysqld/mysqld.pid
  fi
  mariadb --socket=/run/mysqld/mysqld.sock -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
    CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'higgsci'; GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
  cat >"$CONF/slurmdbd.conf" <<EOC
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=slurm
LogFile=$LOG/slurmdbd.log
PidFile=$RUN/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=higgsci
StorageLoc=slurm_acct_db
EOC
  chown slurm:slurm "$CONF/slurmdbd.conf"; chmod 600 "$CONF/slurmdbd.conf"
  alive "$RUN/slurmdbd.pid" slurmdbd || { slurmdbd; record slurmdbd "$RUN/slurmdbd.pid"; }
  wait_for 30 "slurmdbd" port_open 6819
  if alive "$RUN/slurmctld.pid" slurmctld; then scontrol reconfigure || true
  else slurmctld; record slurmctld "$RUN/slurmctld.pid"; fi
  wait_for 30 slurmctld scontrol ping
  for i in $(seq 1 "$NODES"); do
    alive "$RUN/slurmd-node$i.pid" slurmd || { slurmd -N "node$i"; record "slurmd-node$i" "$RUN/slurmd-node$i.pid"; }
  done
  deadline=$((SECONDS + 60)); resumed=0
  while :; do
    states=$(sinfo -h -N -o '%N %t' 2>/dev/null | sort -u)
    [ "$(echo "$states" | awk '$2=="idle"' | wc -l)" -ge "$NODES" ] && break
    if [ "$resumed" = 0 ] && echo "$states" | grep -qE ' (down|drain|drng|fail)'; then scontrol update NodeName="$nodelist" State=RESUME 2>/dev/null || true; resumed=1; fi
    [ $SECONDS -lt $deadline ] || die "nodes not idle: $(echo $states)"
    sleep 0.5
  done
  log "cluster up: $(sinfo -h -N -o '%N=%t' | tr '\n' ' ')"
}

case "${1:-}" in install) install ;; start) start ;; stop) stop ;; *) echo "usage: $0 install|start|stop" >&2; exit 2 ;; esac
