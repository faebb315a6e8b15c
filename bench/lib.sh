# shellcheck shell=bash
# Helpers for the benchmark scripts (sourced, not run): the work directory
# and exit, the client key, a private OpenSSH sshd and a Dropzone server on
# loopback, each server's CPU time, its memory counted so that many
# processes and one process compare fairly, and the report's common parts.
#
# Set BENCH_NAME (for messages) before sourcing. The start_* functions set
# DZ_PID/DZ_PORT/DZ_LOG and SSHD_PID/SSHD_PORT/SSHD_LOG; the caller stops
# the servers (stop_pid) in its own EXIT trap.

say() { printf '%s\n' "$*" >&2; }
die() { say "${BENCH_NAME:-bench}: $*"; exit 1; }
now() { date +%s.%N; }

# need_tools CMD... : stop unless every command is on PATH.
need_tools() {
    local c
    for c in "$@"; do
        command -v "$c" >/dev/null || die "$c not found (install openssh-client / coreutils / diffutils)"
    done
}

# exit_traps FUNCTION : FUNCTION runs at exit however the script ends: INT
# and TERM exit with 128 + the signal, so that it runs then too and the
# script's status says what ended it.
exit_traps() {
    # shellcheck disable=SC2064 # the function's name, given now
    trap "$1" EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

# end_work STATUS : the end of an EXIT trap: the work directory WORK
# removed, or kept and named with --keep (KEEP=1); exits with STATUS.
end_work() {
    if [ "${KEEP:-0}" = 1 ]; then
        say "== work directory kept: $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$1"
}

# release_bin BUILD : BIN, the release binary under ROOT's target
# directory (or CARGO_TARGET_DIR), built first if BUILD is 1.
release_bin() {
    BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/dropzone"
    if [ "$1" = 1 ]; then
        say "== cargo build --release"
        cargo build --release >&2
    fi
    [ -x "$BIN" ] || die "$BIN not built"
}

# client_key FILE COMMENT : a new client key pair (FILE, FILE.pub) and
# SSH_OPTS, the OpenSSH client options for every server: that key alone,
# no config file, and any host key accepted (the servers' are new each run).
client_key() {
    ssh-keygen -q -t ed25519 -N '' -C "$2" -f "$1"
    # shellcheck disable=SC2034 # for the caller
    SSH_OPTS=(-F /dev/null -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null
              -o BatchMode=yes -o IdentitiesOnly=yes -o LogLevel=ERROR -i "$1")
}

# wait_pids PID... : wait for each; returns 1 if one failed, with FAILED_AT
# the index of the first that did and FAILED_ST its exit status (the rest
# are waited for all the same, so that none outlives the failure report).
wait_pids() {
    local i p st
    local pids=("$@")
    for i in "${!pids[@]}"; do
        st=0; wait "${pids[$i]}" || st=$?
        if [ "$st" != 0 ]; then
            # shellcheck disable=SC2034 # for the caller
            FAILED_AT=$i FAILED_ST=$st
            for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
            return 1
        fi
    done
}

SSHD=/usr/sbin/sshd
# ensure_sshd : install openssh-server if the sshd binary is missing.
ensure_sshd() {
    [ -x "$SSHD" ] && return 0
    say "== $SSHD missing: apt-get install -y openssh-server"
    DEBIAN_FRONTEND=noninteractive apt-get install -y openssh-server >&2 \
        || { apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y openssh-server >&2; } \
        || die "could not install openssh-server"
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# server_alive NAME PID LOG : stop, with the end of the server's LOG, if
# it has exited (a client failing next would hide why).
server_alive() {
    kill -0 "$2" 2>/dev/null && return 0
    say "!! $1 (pid $2) has exited; log tail:"
    tail -n 40 "$3" | sed 's/^/   | /' >&2
    exit 1
}

# stop_pid PID : end a process this script started and reap it. Safe under
# set -e (wait gives the status of a process ended by TERM: 143).
stop_pid() {
    [ -n "$1" ] || return 0
    if kill -0 "$1" 2>/dev/null; then
        kill -TERM "$1" 2>/dev/null || true
        wait "$1" 2>/dev/null || true
    fi
    return 0
}

# dropzone_toml : the dropzone.toml every benchmark starts from (callers
# append their sections): a port of the server's choosing, which
# start_dropzone reads from its log, and everything else in its directory.
dropzone_toml() {
    cat <<'EOF'
listen = "127.0.0.1:0"
host_keys_dir = "host_keys"
data_dir = "data"
keks_dir = "keks"

[auth]
users_file = "users.toml"

[kms.local]
key_dir = "master_key"
EOF
}

# start_dropzone BIN DIR USER PUBKEY : DIR/dropzone.toml is written by the
# caller with listen = "127.0.0.1:0"; adds USER with PUBKEY and serves.
start_dropzone() {
    local bin=$1 dir=$2 user=$3 pub=$4 i
    (cd "$dir" && "$bin" user add "$user" --authorized-key "$pub" --config dropzone.toml) >&2
    DZ_LOG=$dir/server.log
    (cd "$dir" && exec "$bin" serve --config dropzone.toml) 2>"$DZ_LOG" &
    DZ_PID=$!
    DZ_PORT=
    for i in $(seq 1 300); do
        DZ_PORT=$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9][0-9]*\).*/\1/p' "$DZ_LOG" | head -n1)
        [ -n "$DZ_PORT" ] && break
        kill -0 "$DZ_PID" 2>/dev/null || { cat "$DZ_LOG" >&2; die "dropzone serve exited during start-up"; }
        sleep 0.1
    done
    [ -n "$DZ_PORT" ] || { cat "$DZ_LOG" >&2; die "dropzone did not report 'listening on' within 30 s (after $i tries)"; }
    say "== dropzone pid $DZ_PID listening on 127.0.0.1:$DZ_PORT"
}

# start_sshd DIR HOME PUBKEY [EXTRA_CONFIG_LINES] : a private sshd as root on
# a free port, internal-sftp starting in HOME (so that relative paths mean
# the same on both servers), PUBKEY the only authorized key.
start_sshd() {
    local dir=$1 home=$2 pub=$3 extra=${4:-} p i
    ssh-keygen -q -t ed25519 -N '' -f "$dir/ssh_host_ed25519_key"
    cp "$pub" "$dir/authorized_keys"
    # sshd refuses to start without its privilege separation directory.
    [ -d /run/sshd ] || mkdir -m 0755 /run/sshd
    SSHD_LOG=$dir/server.log
    SSHD_PORT=
    for _ in 1 2 3 4 5 6 7 8 9 10; do
        p=$((20000 + RANDOM % 40000))
        port_in_use "$p" && continue
        cat >"$dir/sshd_config" <<EOF
Port $p
ListenAddress 127.0.0.1
HostKey $dir/ssh_host_ed25519_key
PidFile $dir/sshd.pid
AuthorizedKeysFile $dir/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
StrictModes no
UsePAM no
$extra
Subsystem sftp internal-sftp -d $home
EOF
        : >"$SSHD_LOG"
        "$SSHD" -D -e -f "$dir/sshd_config" 2>"$SSHD_LOG" &
        SSHD_PID=$!
        for i in $(seq 1 100); do
            grep -q "Server listening on 127.0.0.1 port $p" "$SSHD_LOG" && { SSHD_PORT=$p; break; }
            kill -0 "$SSHD_PID" 2>/dev/null || break
            sleep 0.1
        done
        [ -n "$SSHD_PORT" ] && break
        say "sshd did not start on port $p (after $i tries):"; cat "$SSHD_LOG" >&2
        stop_pid "$SSHD_PID"
        SSHD_PID=
    done
    [ -n "$SSHD_PORT" ] || die "could not start $SSHD"
    say "== sshd pid $SSHD_PID listening on 127.0.0.1:$SSHD_PORT"
}

# ---------------------------------------------------------------- CPU
# proc_cpu PID : user + system seconds of PID and of its children once
# reaped (fields 14-17 of /proc/PID/stat; after "pid (comm) " they are
# 12-15). OpenSSH runs each connection in processes of its own whose time
# reaches sshd's figures when they exit; Dropzone's threads are its own.
CLK_TCK=$(getconf CLK_TCK)
proc_cpu() {
    awk -v hz="$CLK_TCK" '{ sub(/^.*\) /, ""); printf "%.2f\n", ($12 + $13 + $14 + $15) / hz }' "/proc/$1/stat"
}

# settle_children PID SECONDS : wait until PID has reaped all its children
# (so that proc_cpu counts their time); returns 1 if some are left.
settle_children() {
    local p=$1 i
    [ -r "/proc/$p/task/$p/children" ] || return 1
    for ((i = 0; i < $2 * 20; i++)); do
        [ -n "$(cat "/proc/$p/task/$p/children" 2>/dev/null)" ] || return 0
        sleep 0.05
    done
    return 1
}

# ---------------------------------------------------------------- memory
# mem_tree PID : "RSS_KIB PSS_KIB PROCESSES" summed over PID and all its
# descendants (/proc/PID/smaps_rollup). RSS summed over processes counts
# every shared page (the sshd binary, libraries, copy-on-write pages of the
# listener) once per process; PSS divides each page among the processes
# mapping it, so the PSS sum is the memory the server tree really holds.
# Descendants come from /proc/PID/task/PID/children (each process's main
# thread: sshd's processes have one thread, Dropzone forks none), read in
# one awk so that sampling often costs little CPU (no ps).
mem_tree() {
    awk -v root="$1" 'BEGIN {
        n = 1; q[1] = root; rss = 0; pss = 0; seen = 0
        for (i = 1; i <= n; i++) {
            p = q[i]; f = "/proc/" p "/smaps_rollup"
            while ((getline line < f) > 0) {
                split(line, a, " ")
                if (a[1] == "Rss:") { rss += a[2]; seen++ }
                else if (a[1] == "Pss:") pss += a[2]
            }
            close(f)
            f = "/proc/" p "/task/" p "/children"
            if ((getline line < f) > 0) {
                m = split(line, c, " ")
                for (j = 1; j <= m; j++) q[++n] = c[j]
            }
            close(f)
        }
        printf "%d %d %d\n", rss, pss, seen
    }'
}

# status_kib PID FIELD : a field of /proc/PID/status in KiB (VmRSS, VmHWM).
status_kib() { awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status"; }

# hwm_reset PID : make VmHWM the current RSS (clear_refs 5), so that VmHWM
# read later is the peak since now; returns 1 if the kernel refuses.
hwm_reset() { echo 5 >"/proc/$1/clear_refs" 2>/dev/null; }

# One process's peak RSS transfer by transfer: VmHWM starts again at every
# hwm_restart, so LIFE_HWM_KIB keeps the largest seen; RSS_RESET_FAILED
# becomes 1 if the kernel refused a reset (the peaks read are then
# lifetime peaks).
LIFE_HWM_KIB=0
RSS_RESET_FAILED=0
# hwm_note PID : VmHWM now into HWM_KIB, and LIFE_HWM_KIB raised to it.
hwm_note() {
    HWM_KIB=$(status_kib "$1" VmHWM)
    if ((HWM_KIB > LIFE_HWM_KIB)); then LIFE_HWM_KIB=$HWM_KIB; fi
}
# hwm_restart PID : hwm_note, then VmHWM the peak from now on.
hwm_restart() {
    hwm_note "$1"
    # shellcheck disable=SC2034 # for the caller's report
    hwm_reset "$1" || RSS_RESET_FAILED=1
}

mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

# ---------------------------------------------------------------- runs
# alternate_runs RUNS A B AFTER_RUN TEST... : RUNS runs, each running every
# TEST for side A and side B (TEST SIDE, then the caller's alive), A first
# in odd runs and B in even ones so that neither side always goes first;
# AFTER_RUN after each run. r is the run under way (global: callers' notes
# name it).
alternate_runs() {
    local runs=$1 a=$2 b=$3 after=$4 t s order
    shift 4
    for ((r = 1; r <= runs; r++)); do
        if ((r % 2)); then order=("$a" "$b"); else order=("$b" "$a"); fi
        say "== run $r of $runs (${order[0]} first)"
        for t in "$@"; do
            for s in "${order[@]}"; do
                "$t" "$s"
                alive
            done
        done
        "$after"
    done
}

# ---------------------------------------------------------------- results
# A results file holds one figure a line: "TEST WHO FIGURE".
# median TEST WHO FILE [FORMAT] : the median figure of TEST and WHO ("-" if
# none); of an even count, the mean of the middle two printed with FORMAT
# (default %.1f).
median() {
    awk -v t="$1" -v s="$2" '$1 == t && $2 == s { print $3 }' "$3" | sort -g \
        | awk -v f="${4:-%.1f}\n" '{ v[NR] = $1 } END { if (NR == 0) print "-"; else if (NR % 2) print v[(NR + 1) / 2]; else printf f, (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
# range TEST WHO FILE : "LOWEST-HIGHEST" figure of TEST and WHO.
range() {
    awk -v t="$1" -v s="$2" '$1 == t && $2 == s { print $3 }' "$3" | sort -g \
        | awk 'NR == 1 { lo = $1 } { hi = $1 } END { printf "%s-%s", lo, hi }'
}

# ---------------------------------------------------------------- report
# report_host ROOT [NOTE] : the lines every report starts with: when, where,
# which Dropzone (NOTE ends that line).
report_host() {
    local root=$1 dirty=""
    git -C "$root" status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null | grep -q . \
        && dirty=' + uncommitted changes in src/Cargo'
    echo "date:     $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "machine:  nproc=$(nproc), $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo), $(awk '/MemTotal/ { printf "%.0f GiB RAM", $2 / 1048576 }' /proc/meminfo), Linux $(uname -r)"
    echo "dropzone: $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo '(not a git checkout)')$dirty, $(rustc --version 2>/dev/null || true)${2:-}"
}

# report_header ROOT [NOTE] : report_host, then which OpenSSH (server and
# client).
report_header() {
    report_host "$1" "${2:-}"
    echo "openssh:  $("$SSHD" -V 2>&1 | head -n1 || true); client $(ssh -V 2>&1)"
}

# What a server's log shows when something went wrong: Dropzone's warnings,
# errors and panics; sshd's errors and failures.
# shellcheck disable=SC2034 # for the callers
DZ_PROBLEMS='WARN|ERROR|panick'
# shellcheck disable=SC2034
SSHD_PROBLEMS='error|fatal|[Ff]ailed'
# log_problems NAME LOG PATTERN : a transfer can succeed while the server
# logs a problem: how many lines of LOG match, and the first 10.
log_problems() {
    local n
    n=$(grep -Ec "$3" "$2" || true)
    echo "$1 server log: $n line(s) matching /$3/"
    grep -E "$3" "$2" | head -n 10 | sed 's/^/    /' || true
}
