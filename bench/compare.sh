#!/usr/bin/env bash
# Server throughput: Dropzone against a private OpenSSH sshd (internal-sftp),
# both on loopback with their files on tmpfs, both driven by the OpenSSH
# sftp/scp clients. See docs/PERFORMANCE.md, "Server throughput vs OpenSSH".
# Prints MiB/s and ratios (medians), each server's CPU time per transfer and
# per GiB moved, and the Dropzone server's peak RSS; checks every download.
#
#   bench/compare.sh                 full run: 1 GiB, 2000 x 4 KiB, 8 x 128 MiB, 3 runs
#   bench/compare.sh --runs 5        more runs (the table shows medians)
#   bench/compare.sh --smoke         tiny sizes, 1 run: proves the benchmark works (CI)
#   bench/compare.sh --keep          keep the work directory on /dev/shm afterwards
#   bench/compare.sh --cpu-idle      let idle CPUs sleep as configured (by default the
#                                    runs hold /dev/cpu_dma_latency at 0, see below)
#   bench/compare.sh --bin PATH      serve with this dropzone binary (e.g. an earlier
#                                    build kept aside) instead of building the tree's
#
# Needs: cargo, OpenSSH client (sftp, scp, ssh-keygen), /usr/sbin/sshd
# (installed with apt-get if missing), root (sshd must run as root and the
# OpenSSH test user is the current user), and /dev/shm.
set -euo pipefail

usage() { sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; }

BENCH_NAME=compare.sh
SMOKE=0
RUNS=
KEEP=0
STEADY=1
GIVEN_BIN=
while [ $# -gt 0 ]; do
    case "$1" in
        --smoke) SMOKE=1 ;;
        --runs) RUNS=${2:?--runs needs a number}; shift ;;
        --runs=*) RUNS=${1#--runs=} ;;
        --keep) KEEP=1 ;;
        --cpu-idle) STEADY=0 ;;
        --bin) GIVEN_BIN=${2:?--bin needs a path}; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "compare.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

if [ "$SMOKE" = 1 ]; then
    BIG_MIB=8        # (a) and (d): one file
    SMALL_N=50       # (b): files of 4 KiB
    PAR_N=2          # (c): parallel sessions ...
    PAR_MIB=4        #      ... of this many MiB each
    RUNS=${RUNS:-1}
    TIMEOUT=60       # seconds per client command
else
    BIG_MIB=1024
    SMALL_N=2000
    PAR_N=8
    PAR_MIB=128
    RUNS=${RUNS:-3}
    TIMEOUT=900
fi
SMALL_KIB=4
case "$RUNS" in ''|*[!0-9]*|0) echo "compare.sh: --runs must be a positive integer" >&2; exit 2 ;; esac

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

[ "$(id -u)" = 0 ] || die "must run as root (the private sshd runs as root; its test user is root)"
[ -d /dev/shm ] || die "/dev/shm (tmpfs) is needed for both servers' files"
need_tools sftp scp ssh-keygen cmp diff timeout awk
ensure_sshd

# ---------------------------------------------------------------- build
if [ -n "$GIVEN_BIN" ]; then
    [ -x "$GIVEN_BIN" ] || die "--bin $GIVEN_BIN: not an executable file"
    BIN=$(cd "$(dirname "$GIVEN_BIN")" && pwd)/$(basename "$GIVEN_BIN")
else
    release_bin 1
fi

# ---------------------------------------------------------------- work dir
WORK=$(mktemp -d /dev/shm/dropzone-bench.XXXXXX)
SRC=$WORK/src          # client-side sources (generated once)
DL=$WORK/dl            # client-side downloads (checked, then removed)
OUT=$WORK/out          # client command outputs
DZ_DIR=$WORK/dropzone  # Dropzone's config, keys and data
SSHD_DIR=$WORK/sshd    # sshd's config and host key
SSHD_HOME=$SSHD_DIR/data   # where internal-sftp starts (-d): OpenSSH's files
mkdir -p "$SRC" "$DL" "$OUT" "$DZ_DIR" "$SSHD_DIR" "$SSHD_HOME"
DZ_PID=
SSHD_PID=
QOS_PID=

# Ends the request that keeps idle CPUs awake ("Idle CPUs kept awake"
# below), if one is held.
let_cpus_idle() {
    stop_pid "$QOS_PID"
    QOS_PID=
}

cleanup() {
    local rc=$?
    set +e
    stop_pid "$DZ_PID"
    stop_pid "$SSHD_PID"
    let_cpus_idle
    end_work "$rc"
}
exit_traps cleanup

KEY=$WORK/client_key
client_key "$KEY" dropzone-bench

# ---------------------------------------------------------------- Dropzone
dropzone_toml >"$DZ_DIR/dropzone.toml"
start_dropzone "$BIN" "$DZ_DIR" bench "$KEY.pub"

# ---------------------------------------------------------------- OpenSSH sshd
# Every session starts in the tmpfs directory SSHD_HOME (no ChrootDirectory),
# so that relative paths mean the same on both servers.
start_sshd "$SSHD_DIR" "$SSHD_HOME" "$KEY.pub"

declare -A PORT=([dropzone]=$DZ_PORT [openssh]=$SSHD_PORT)
declare -A LOGIN=([dropzone]=bench [openssh]=$(id -un))
declare -A LOG=([dropzone]=$DZ_LOG [openssh]=$SSHD_LOG)
declare -A PID=([dropzone]=$DZ_PID [openssh]=$SSHD_PID)

# ---------------------------------------------------------------- helpers
# mibs BYTES T0 T1 -> MiB/s
mibs() { awk -v b="$1" -v a="$2" -v z="$3" 'BEGIN { printf "%.1f", b / 1048576 / (z - a) }'; }

# fail SERVER OUTFILE STATUS CMD... : report a failed client command and stop.
fail() {
    local s=$1 out=$2 st=$3; shift 3
    say ""
    say "!! FAILED against $s (exit status $st):"
    say "!!   $*"
    say "!! client output:"; sed 's/^/   | /' "$out" >&2 || true
    if kill -0 "${PID[$s]}" 2>/dev/null; then
        say "!! $s server (pid ${PID[$s]}) is still running"
    else
        say "!! $s server (pid ${PID[$s]}) is NOT running any more"
    fi
    say "!! $s server log, last 40 lines (${LOG[$s]}):"
    tail -n 40 "${LOG[$s]}" | sed 's/^/   | /' >&2 || true
    exit 1
}

# sftp_cmd SERVER BATCHFILE : the sftp command line (printed into the array CMD)
sftp_cmd() { CMD=(sftp -b "$2" "${SSH_OPTS[@]}" -P "${PORT[$1]}" "${LOGIN[$1]}@127.0.0.1"); }

# run SERVER OUTFILE CMD... : run a client command with a time limit; fail loudly.
run() {
    local s=$1 out=$2 st=0; shift 2
    timeout "$TIMEOUT" "$@" >"$out" 2>&1 || st=$?
    [ "$st" = 0 ] || fail "$s" "$out" "$st" "$@"
}

# sftp_batch SERVER NAME 'commands' : run an sftp batch (one session).
sftp_batch() {
    local s=$1 name=$2
    printf '%s\n' "$3" >"$OUT/$name.$s.batch"
    sftp_cmd "$s" "$OUT/$name.$s.batch"
    run "$s" "$OUT/$name.$s.out" "${CMD[@]}"
}

check_same() { # check_same SERVER WHAT EXPECTED GOT
    if [ -d "$3" ]; then
        diff -r "$3" "$4" >"$OUT/diff.out" 2>&1 \
            || { say "!! MISMATCH ($1, $2): diff -r $3 $4"; head -n 20 "$OUT/diff.out" >&2; exit 1; }
    else
        cmp "$3" "$4" >&2 || { say "!! MISMATCH ($1, $2): cmp $3 $4"; exit 1; }
    fi
}

# Peak RSS of the Dropzone server transfer by transfer: VmHWM restarted
# before each (hwm_restart), read after it.
RSS_BEFORE_KIB=0
RSSLOG=$WORK/rss.txt   # lines: RUN LABEL RSS_BEFORE_KIB PEAK_KIB RSS_AFTER_KIB
: >"$RSSLOG"
rss_reset() { # rss_reset SERVER : start a Dropzone measurement
    [ "$1" = dropzone ] || return 0
    hwm_restart "$DZ_PID"
    RSS_BEFORE_KIB=$(status_kib "$DZ_PID" VmRSS)
}
rss_note() { # rss_note SERVER LABEL : the Dropzone peak since rss_reset
    [ "$1" = dropzone ] || return 0
    local a
    hwm_note "$DZ_PID"; a=$(status_kib "$DZ_PID" VmRSS)
    printf '%s %s %s %s %s\n' "$r" "$2" "$RSS_BEFORE_KIB" "$HWM_KIB" "$a" >>"$RSSLOG"
    printf '   %-10s dropzone  RSS before %s MiB, peak %s MiB, after %s MiB\n' \
        "$2" "$(mib "$RSS_BEFORE_KIB")" "$(mib "$HWM_KIB")" "$(mib "$a")" >&2
}
alive() {
    server_alive "the dropzone server" "$DZ_PID" "$DZ_LOG"
    server_alive "the openssh server" "$SSHD_PID" "$SSHD_LOG"
}

# CPU time a server spent on a transfer (proc_cpu: OpenSSH's connection
# processes count once sshd has reaped them). Less noisy than wall time on
# a shared VM: it does not count time spent waiting to be scheduled.
CPULOG=$WORK/cpu.txt   # lines: TEST SERVER SECONDS
: >"$CPULOG"
CPU0=0
server_cpu() { proc_cpu "${PID[$1]}"; }
cpu_mark() { cpu_settle "$1"; CPU0=$(server_cpu "$1"); }
CPU_WARNED=0
cpu_warn() { [ "$CPU_WARNED" = 1 ] || say "!! $*: OpenSSH's CPU times may be too low"; CPU_WARNED=1; }
cpu_settle() { # wait (up to 3 s) until sshd has reaped its connection processes
    [ "$1" = openssh ] || return 0
    local p=${PID[openssh]}
    [ -r "/proc/$p/task/$p/children" ] || { cpu_warn "no /proc/PID/task/PID/children"; return 0; }
    settle_children "$p" 3 || cpu_warn "sshd still had connection processes 3 s after a transfer"
}

RESULTS=$WORK/results.txt   # lines: TEST SERVER MIB_S
: >"$RESULTS"
record() { # record TEST SERVER BYTES T0 T1 (after cpu_mark SERVER before T0)
    local r c
    r=$(mibs "$3" "$4" "$5")
    cpu_settle "$2"
    c=$(awk -v a="$CPU0" -v z="$(server_cpu "$2")" 'BEGIN { printf "%.2f", z - a }')
    printf '%s %s %s\n' "$1" "$2" "$r" >>"$RESULTS"
    printf '%s %s %s\n' "$1" "$2" "$c" >>"$CPULOG"
    printf '   %-10s %-9s %8s MiB/s  (%.2f s, server CPU %s s)\n' "$1" "$2" "$r" "$(awk -v a="$4" -v z="$5" 'BEGIN{print z-a}')" "$c" >&2
}

# ---------------------------------------------------------------- test data
say "== generating test data on $SRC"
BIG_BYTES=$((BIG_MIB * 1048576))
head -c "$BIG_BYTES" /dev/urandom >"$SRC/big"
mkdir "$SRC/small"
head -c $((SMALL_N * SMALL_KIB * 1024)) /dev/urandom >"$SRC/small.all"
(cd "$SRC/small" && split -b $((SMALL_KIB * 1024)) -a 5 -d ../small.all f)
rm "$SRC/small.all"
[ "$(find "$SRC/small" -type f | wc -l)" = "$SMALL_N" ] || die "small-file set not generated"
SMALL_BYTES=$((SMALL_N * SMALL_KIB * 1024))
PAR_BYTES=$((PAR_MIB * 1048576))
for ((i = 0; i < PAR_N; i++)); do head -c "$PAR_BYTES" /dev/urandom >"$SRC/par$i"; done

# ---------------------------------------------------------------- the tests
test_big_sftp() {
    local s=$1 t0 t1
    rss_reset "$s"
    cpu_mark "$s"; t0=$(now); sftp_batch "$s" big-up "put $SRC/big big"; t1=$(now)
    rss_note "$s" big-up
    record big-up "$s" "$BIG_BYTES" "$t0" "$t1"
    rss_reset "$s"
    cpu_mark "$s"; t0=$(now); sftp_batch "$s" big-down "get big $DL/big"; t1=$(now)
    rss_note "$s" big-down
    record big-down "$s" "$BIG_BYTES" "$t0" "$t1"
    check_same "$s" "sftp get big" "$SRC/big" "$DL/big"
    rm -f "$DL/big"
    sftp_batch "$s" big-rm "rm big"
}

test_small() {
    local s=$1 t0 t1
    cpu_mark "$s"; t0=$(now); sftp_batch "$s" small-up "put -r $SRC/small small"; t1=$(now)
    record small-up "$s" "$SMALL_BYTES" "$t0" "$t1"
    cpu_mark "$s"; t0=$(now); sftp_batch "$s" small-down "get -r small $DL/small"; t1=$(now)
    record small-down "$s" "$SMALL_BYTES" "$t0" "$t1"
    check_same "$s" "sftp get -r small" "$SRC/small" "$DL/small"
    rm -rf "$DL/small"
    sftp_batch "$s" small-rm "rm small/*
rmdir small"
}

test_parallel() {
    local s=$1 t0 t1 i
    local pids=()
    rss_reset "$s"
    cpu_mark "$s"; t0=$(now)
    for ((i = 0; i < PAR_N; i++)); do
        printf 'put %s par%d\nget par%d %s\n' "$SRC/par$i" "$i" "$i" "$DL/par$i" >"$OUT/par$i.$s.batch"
        sftp_cmd "$s" "$OUT/par$i.$s.batch"
        timeout "$TIMEOUT" "${CMD[@]}" >"$OUT/par$i.$s.out" 2>&1 &
        pids+=($!)
    done
    if ! wait_pids "${pids[@]}"; then
        i=$FAILED_AT
        sftp_cmd "$s" "$OUT/par$i.$s.batch"
        say "(session $i of $PAR_N; its batch: $(tr '\n' ';' <"$OUT/par$i.$s.batch"))"
        fail "$s" "$OUT/par$i.$s.out" "$FAILED_ST" "${CMD[@]}"
    fi
    t1=$(now)
    rss_note "$s" parallel
    record parallel "$s" $((2 * PAR_N * PAR_BYTES)) "$t0" "$t1"
    local rmcmds=""
    for ((i = 0; i < PAR_N; i++)); do
        check_same "$s" "parallel session $i" "$SRC/par$i" "$DL/par$i"
        rm -f "$DL/par$i"
        rmcmds+="rm par$i"$'\n'
    done
    sftp_batch "$s" par-rm "$rmcmds"
}

test_scp() {
    local s=$1 t0 t1
    local remote="${LOGIN[$s]}@127.0.0.1"
    local scp_opts=(-s -q "${SSH_OPTS[@]}" -P "${PORT[$s]}")
    rss_reset "$s"
    cpu_mark "$s"; t0=$(now); run "$s" "$OUT/scp-up.$s.out" scp "${scp_opts[@]}" "$SRC/big" "$remote:big"; t1=$(now)
    rss_note "$s" scp-up
    record scp-up "$s" "$BIG_BYTES" "$t0" "$t1"
    rss_reset "$s"
    cpu_mark "$s"; t0=$(now); run "$s" "$OUT/scp-down.$s.out" scp "${scp_opts[@]}" "$remote:big" "$DL/big"; t1=$(now)
    rss_note "$s" scp-down
    record scp-down "$s" "$BIG_BYTES" "$t0" "$t1"
    check_same "$s" "scp download" "$SRC/big" "$DL/big"
    rm -f "$DL/big"
    sftp_batch "$s" scp-rm "rm big"
}

# Session set-up alone (connect, key exchange, authentication, sftp
# subsystem, disconnect): an empty batch, 3 times. Part of every figure above.
CONNECTS=$WORK/connect.txt   # lines: SERVER MILLISECONDS
: >"$CONNECTS"
test_connect() {
    local s=$1 t0 t1
    for _ in 1 2 3; do
        cpu_mark "$s"; t0=$(now); sftp_batch "$s" connect ""; t1=$(now)
        awk -v s="$s" -v a="$t0" -v z="$t1" 'BEGIN { printf "%s %.0f\n", s, (z - a) * 1000 }' >>"$CONNECTS"
        cpu_settle "$s"
        awk -v s="$s" -v a="$CPU0" -v z="$(server_cpu "$s")" 'BEGIN { printf "connect %s %.2f\n", s, z - a }' >>"$CPULOG"
    done
}

# Both servers must be empty between runs so that every run starts equal.
check_empty() {
    local left
    left=$(find "$SSHD_HOME" -mindepth 1 | head -n 5)
    [ -z "$left" ] || die "OpenSSH data directory not empty after a run: $left"
    if [ -d "$DZ_DIR/data/bench" ]; then
        left=$(find "$DZ_DIR/data/bench" -mindepth 1 | head -n 5)
        [ -z "$left" ] || die "Dropzone data directory not empty after a run: $left"
    fi
}

# Negotiated algorithms, for the record (same client, same options).
algos() {
    # ssh takes the first value it is given: this LogLevel wins over SSH_OPTS'.
    timeout 30 sftp -v -b /dev/null -o LogLevel=DEBUG1 "${SSH_OPTS[@]}" -P "${PORT[$1]}" "${LOGIN[$1]}@127.0.0.1" 2>&1 </dev/null \
        | sed -n 's/.*kex: algorithm: \(.*\)/kex \1/p; s/.*kex: host key algorithm: \(.*\)/hostkey \1/p; s/.*kex: server->client cipher: \([^ ]*\) MAC: \([^ ]*\).*/cipher \1 mac \2/p' \
        | tr '\n' ' '
}
ALGO_DZ=$(algos dropzone)
ALGO_OS=$(algos openssh)
say "== negotiated: dropzone: $ALGO_DZ"
say "==             openssh:  $ALGO_OS"

# Idle CPUs kept awake for the runs. On a VM whose idle vCPUs halt at once
# (cpuidle haltpoll with polling off), waking a halted vCPU takes from tens
# of microseconds to milliseconds, and the small-file tests, one round trip
# after another through three or four processes, spend most of their time
# in such wake-ups: their wall time then varies 2-3x from run to run for
# both servers (docs/PERFORMANCE.md). A PM QoS request of 0 us on
# /dev/cpu_dma_latency, the kernel's interface for latency-sensitive work
# (tuned's latency-performance profile uses it too), makes idle CPUs poll
# instead; it holds while the file stays open and applies to both servers
# alike. --cpu-idle leaves idle CPUs as configured.
CPU_IDLE_NOTE="as configured (--cpu-idle)"
if [ "$STEADY" = 1 ]; then
    if [ -w /dev/cpu_dma_latency ]; then
        # A child holds the request open (no server inherits it) and lets
        # go when this script ends, however it ends.
        bash -c 'exec 3>/dev/cpu_dma_latency && printf 0 >&3 && while kill -0 "$1" 2>/dev/null; do sleep 1; done' hold-cpu-awake $$ &
        QOS_PID=$!
        sleep 0.2
        if kill -0 "$QOS_PID" 2>/dev/null; then
            CPU_IDLE_NOTE="kept awake: /dev/cpu_dma_latency held at 0 during the runs (--cpu-idle: as configured)"
        else
            QOS_PID=
            CPU_IDLE_NOTE="as configured (could not hold /dev/cpu_dma_latency)"
        fi
    else
        CPU_IDLE_NOTE="as configured (/dev/cpu_dma_latency not available)"
    fi
fi
say "== idle CPUs: $CPU_IDLE_NOTE"

DZ_IDLE_KIB=$(status_kib "$DZ_PID" VmRSS)
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
T_START=$(now)
alternate_runs "$RUNS" dropzone openssh check_empty test_connect test_big_sftp test_scp test_small test_parallel
T_END=$(now)
# The report must not claim a request that lapsed during the runs.
if [ -n "$QOS_PID" ] && ! kill -0 "$QOS_PID" 2>/dev/null; then
    CPU_IDLE_NOTE="as configured for part of the runs: the /dev/cpu_dma_latency holder exited early"
fi
let_cpus_idle

# ---------------------------------------------------------------- report
size_label() { if [ "$1" -ge 1024 ]; then echo "$(($1 / 1024)) GiB"; else echo "$1 MiB"; fi; }
BIG_L=$(size_label "$BIG_MIB")

cmed() { awk -v s="$1" '$1 == s { print $2 }' "$CONNECTS" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
SMALL_MIB=$(awk -v b="$SMALL_BYTES" 'BEGIN { print b / 1048576 }')
declare -A MIB=([big-up]=$BIG_MIB [big-down]=$BIG_MIB [small-up]=$SMALL_MIB [small-down]=$SMALL_MIB
                [parallel]=$((2 * PAR_N * PAR_MIB)) [scp-up]=$BIG_MIB [scp-down]=$BIG_MIB)
declare -A LABEL=(
    [big-up]="sftp put, $BIG_L file"
    [big-down]="sftp get, $BIG_L file"
    [small-up]="sftp put -r, $SMALL_N x $SMALL_KIB KiB"
    [small-down]="sftp get -r, $SMALL_N x $SMALL_KIB KiB"
    [parallel]="$PAR_N sessions x $PAR_MIB MiB put+get"
    [scp-up]="scp upload, $BIG_L file"
    [scp-down]="scp download, $BIG_L file"
)

{
    echo
    echo "Dropzone vs OpenSSH sshd (internal-sftp), loopback, tmpfs; OpenSSH sftp/scp client"
    if [ -n "$GIVEN_BIN" ]; then
        report_header "$ROOT" "; serving with --bin $GIVEN_BIN, not this tree's build"
    else
        report_header "$ROOT"
    fi
    echo "algos:    dropzone: $ALGO_DZ"
    echo "          openssh:  $ALGO_OS"
    echo "idle CPUs: $CPU_IDLE_NOTE"
    echo "load:     $LOAD_BEFORE before the runs (1/5/15 min load average; other work on the machine skews the figures)"
    echo "runs:     $RUNS per server and test, alternating; MiB/s = MiB moved / wall time of the client command (incl. connect+auth); medians"
    echo "          parallel: total MiB moved by all sessions (up + down) / wall time until the last session ended"
    echo
    CD=$(cmed dropzone); CO=$(cmed openssh)
    printf '| %-34s | %14s | %14s | %16s | %16s | %6s | %18s |\n' test "Dropzone MiB/s" "OpenSSH MiB/s" "Dropzone range" "OpenSSH range" ratio "ratio excl. set-up"
    printf '|%s|%s:|%s:|%s:|%s:|%s:|%s:|\n' "$(printf -- '-%.0s' {1..36})" "$(printf -- '-%.0s' {1..15})" "$(printf -- '-%.0s' {1..15})" "$(printf -- '-%.0s' {1..17})" "$(printf -- '-%.0s' {1..17})" "$(printf -- '-%.0s' {1..7})" "$(printf -- '-%.0s' {1..19})"
    for t in big-up big-down small-up small-down parallel scp-up scp-down; do
        d=$(median "$t" dropzone "$RESULTS"); o=$(median "$t" openssh "$RESULTS")
        ratio=$(awk -v d="$d" -v o="$o" 'BEGIN { if (o > 0) printf "%.2fx", d / o; else print "-" }')
        # The same ratio with each server's median session set-up time taken
        # off the transfer time (one set-up per timed command; the parallel
        # sessions set up concurrently).
        net=$(awk -v m="${MIB[$t]}" -v d="$d" -v o="$o" -v cd="$CD" -v co="$CO" 'BEGIN {
            td = m / d - cd / 1000; to = m / o - co / 1000
            if (td > 0 && to > 0) printf "%.2fx", to / td; else print "-" }')
        printf '| %-34s | %14s | %14s | %16s | %16s | %6s | %18s |\n' "${LABEL[$t]}" "$d" "$o" "$(range "$t" dropzone "$RESULTS")" "$(range "$t" openssh "$RESULTS")" "$ratio" "$net"
    done
    echo
    echo "Session set-up (empty sftp batch: connect, kex, auth, subsystem, exit), median of $((3 * RUNS)):"
    echo "  dropzone $CD ms, openssh $CO ms (included in every figure above; the last column takes it off)"
    echo
    KD=$(median connect dropzone "$CPULOG"); KO=$(median connect openssh "$CPULOG")
    echo "Server CPU time per transfer (user + system; OpenSSH's connection processes included), seconds, median (range):"
    echo "  session set-up alone (median of $((3 * RUNS))): dropzone $KD s, openssh $KO s (in every figure; the last column takes it off)"
    echo
    # s/GiB: the median seconds over the GiB the test moves, the figure
    # that predicts a busy many-core machine (docs/PERFORMANCE.md).
    printf '| %-34s | %18s | %18s | %16s | %18s | %15s | %15s |\n' test "Dropzone" "OpenSSH" "OpenSSH/Dropzone" "ratio excl. set-up" "Dropzone s/GiB" "OpenSSH s/GiB"
    printf '|%s|%s:|%s:|%s:|%s:|%s:|%s:|\n' "$(printf -- '-%.0s' {1..36})" "$(printf -- '-%.0s' {1..19})" "$(printf -- '-%.0s' {1..19})" "$(printf -- '-%.0s' {1..17})" "$(printf -- '-%.0s' {1..19})" "$(printf -- '-%.0s' {1..16})" "$(printf -- '-%.0s' {1..16})"
    for t in big-up big-down small-up small-down parallel scp-up scp-down; do
        d=$(median "$t" dropzone "$CPULOG"); o=$(median "$t" openssh "$CPULOG")
        ratio=$(awk -v d="$d" -v o="$o" 'BEGIN { if (d > 0) printf "%.2fx", o / d; else print "-" }')
        # One set-up per command; the parallel test runs PAR_N sessions.
        n=1; [ "$t" = parallel ] && n=$PAR_N
        net=$(awk -v d="$d" -v o="$o" -v kd="$KD" -v ko="$KO" -v n="$n" 'BEGIN {
            nd = d - n * kd; no = o - n * ko
            if (nd > 0 && no > 0) printf "%.2fx", no / nd; else print "-" }')
        per_gib() { awk -v c="$1" -v m="${MIB[$t]}" 'BEGIN { if (m > 0 && c != "-") printf "%.2f", c / (m / 1024); else print "-" }'; }
        printf '| %-34s | %18s | %18s | %16s | %18s | %15s | %15s |\n' "${LABEL[$t]}" "$d ($(range "$t" dropzone "$CPULOG"))" "$o ($(range "$t" openssh "$CPULOG"))" "$ratio" "$net" "$(per_gib "$d")" "$(per_gib "$o")"
    done
    echo
    # rss MAXFIELD FILTER : the largest field (4: peak, 3: RSS before, 5: after) over matching lines
    rss() { awk -v f="$1" "$2"' { if ($f > m) m = $f } END { printf "%.1f", m / 1024 }' "$RSSLOG"; }
    BIGSEL='$2 ~ /^(big|scp)-/'
    echo "Dropzone server memory (/proc/PID/status; VmHWM reset with clear_refs before each transfer):"
    if [ "$RSS_RESET_FAILED" = 1 ]; then
        echo "  (could not reset VmHWM through /proc/PID/clear_refs: the peaks below are lifetime peaks)"
    fi
    echo "  idle after start-up: RSS $(mib "$DZ_IDLE_KIB") MiB"
    echo "  $BIG_L transfers, run 1 (before any parallel test), peak:"
    echo "    sftp put $(rss 4 '$1 == 1 && $2 == "big-up"'), sftp get $(rss 4 '$1 == 1 && $2 == "big-down"'), scp up $(rss 4 '$1 == 1 && $2 == "scp-up"'), scp down $(rss 4 '$1 == 1 && $2 == "scp-down"') MiB"
    echo "  $BIG_L transfers, all runs: peak $(rss 4 "$BIGSEL") MiB (RSS before a transfer up to $(rss 3 "$BIGSEL") MiB)"
    echo "  $PAR_N parallel sessions: peak $(rss 4 '$2 == "parallel"') MiB, RSS left after them up to $(rss 5 '$2 == "parallel"') MiB"
    hwm_note "$DZ_PID"
    echo "  whole benchmark (incl. start-up): peak $(mib "$LIFE_HWM_KIB") MiB"
    echo
    log_problems dropzone "$DZ_LOG" "$DZ_PROBLEMS"
    log_problems openssh "$SSHD_LOG" "$SSHD_PROBLEMS"
    echo "total time of the runs: $(awk -v a="$T_START" -v z="$T_END" 'BEGIN { printf "%.0f s", z - a }'); every download checked with cmp / diff -r: OK"
}
