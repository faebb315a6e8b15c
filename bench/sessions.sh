#!/usr/bin/env bash
# Many sessions on this machine: Dropzone against a private OpenSSH sshd
# (internal-sftp), both on loopback with their files on tmpfs, both driven
# by the OpenSSH sftp client. See docs/PERFORMANCE.md, "Many sessions".
# Measures what predicts many-core behaviour on few cores: server CPU
# seconds per GiB moved, and server memory per session (Dropzone: RSS of
# its one process, and PSS; OpenSSH: PSS summed over sshd and every
# process it forks). Each step runs for both servers, alternating which
# goes first.
#   A. parallel: N sessions at once each put an M MiB file, then N at once
#      get them back (the first checked with cmp): MiB/s, CPU s per GiB,
#      memory before, peak (sampled every 0.1 s) and per session.
#   B. idle (run first, after 4 warm-up sessions): I sessions held
#      open at once (each ran ls and pwd), memory with them open, per
#      session, and 3 s after they all closed.
# Exits non-zero if any client failed or a download differed.
#
#   bench/sessions.sh                    full run: --sessions "8 64" --mib 32 --idle 400
#   bench/sessions.sh --sessions "8 32"  the parallel session counts (A)
#   bench/sessions.sh --mib 16           MiB per session and direction (A)
#   bench/sessions.sh --idle 200         sessions held open at once (B)
#   bench/sessions.sh --smoke            tiny: sessions "2 4", 2 MiB, idle 10 (about a minute)
#   bench/sessions.sh --keep             keep the work directory on /dev/shm afterwards
#   bench/sessions.sh --no-build         use target/release/dropzone as built
#
# Needs: cargo, OpenSSH client (sftp, ssh-keygen), /usr/sbin/sshd
# (installed with apt-get if missing), root (sshd must run as root and
# the OpenSSH test user is the current user), and /dev/shm.
set -euo pipefail

usage() { sed -n '2,28p' "$0" | sed 's/^# \{0,1\}//'; }

BENCH_NAME=sessions.sh
SMOKE=0
KEEP=0
BUILD=1
SESSIONS=
MIB_EACH=
IDLE=
while [ $# -gt 0 ]; do
    case "$1" in
        --smoke) SMOKE=1 ;;
        --sessions) SESSIONS=${2:?--sessions needs a list such as \"8 64\"}; shift ;;
        --sessions=*) SESSIONS=${1#--sessions=} ;;
        --mib) MIB_EACH=${2:?--mib needs a number}; shift ;;
        --mib=*) MIB_EACH=${1#--mib=} ;;
        --idle) IDLE=${2:?--idle needs a number}; shift ;;
        --idle=*) IDLE=${1#--idle=} ;;
        --keep) KEEP=1 ;;
        --no-build) BUILD=0 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "sessions.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

if [ "$SMOKE" = 1 ]; then
    SESSIONS=${SESSIONS:-"2 4"}
    MIB_EACH=${MIB_EACH:-2}
    IDLE=${IDLE:-10}
    TIMEOUT=60       # seconds per transfer client
    READY_TIMEOUT=60 # seconds for every idle session to log in
    HOLD=3           # idle sessions stay open at least this long (s)
else
    SESSIONS=${SESSIONS:-"8 64"}
    MIB_EACH=${MIB_EACH:-32}
    IDLE=${IDLE:-400}
    TIMEOUT=900
    READY_TIMEOUT=300
    HOLD=15
fi
posint() { case "$1" in ''|*[!0-9]*|0) return 1 ;; esac; }
for n in $SESSIONS; do posint "$n" || { echo "sessions.sh: --sessions takes positive integers: $SESSIONS" >&2; exit 2; }; done
[ -n "${SESSIONS// /}" ] || { echo "sessions.sh: --sessions is empty" >&2; exit 2; }
posint "$MIB_EACH" || { echo "sessions.sh: --mib must be a positive integer" >&2; exit 2; }
case "$IDLE" in ''|*[!0-9]*) echo "sessions.sh: --idle must be a number (0: no idle step)" >&2; exit 2 ;; esac

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

[ "$(id -u)" = 0 ] || die "must run as root (the private sshd runs as root; its test user is root)"
[ -d /dev/shm ] || die "/dev/shm (tmpfs) is needed for both servers' files"
need_tools sftp ssh ssh-keygen cmp timeout awk mkfifo
[ -r "/proc/$$/task/$$/children" ] || die "/proc/PID/task/PID/children is missing (kernel without CONFIG_PROC_CHILDREN): OpenSSH's processes cannot be found"
ensure_sshd

MAXN=0
for n in $SESSIONS; do ((n > MAXN)) && MAXN=$n; done
PEAK_SESSIONS=$((MAXN > IDLE ? MAXN : IDLE))
# The server copies of the largest step and the one source file on tmpfs.
need_kib=$(((MAXN + 2) * MIB_EACH * 1024))
have_kib=$(df -k --output=avail /dev/shm | tail -n1)
((have_kib > need_kib)) || die "/dev/shm has $((have_kib / 1024)) MiB free; $MAXN sessions x $MIB_EACH MiB need about $((need_kib / 1024)) MiB"

# ---------------------------------------------------------------- build
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/dropzone"
if [ "$BUILD" = 1 ]; then
    say "== cargo build --release"
    cargo build --release >&2
fi
[ -x "$BIN" ] || die "$BIN not built"

# ---------------------------------------------------------------- work dir
WORK=$(mktemp -d /dev/shm/dropzone-sessions.XXXXXX)
SRC=$WORK/src          # the one source file every session uploads
DL=$WORK/dl            # the checked download
OUT=$WORK/out          # client outputs
DZ_DIR=$WORK/dropzone
SSHD_DIR=$WORK/sshd
SSHD_HOME=$SSHD_DIR/data
mkdir -p "$SRC" "$DL" "$OUT" "$DZ_DIR" "$SSHD_DIR" "$SSHD_HOME"
DZ_PID=
SSHD_PID=
SAMPLER_PID=
CLIENTS=()             # client pids of the step under way (ended on exit)
IDLE_FIFO=$WORK/idle.fifo

cleanup() {
    local rc=$? p
    set +e
    [ -n "$SAMPLER_PID" ] && kill -TERM "$SAMPLER_PID" 2>/dev/null
    # Idle sessions wait on the FIFO for a line each: give them all one,
    # then end any client still running.
    if [ -p "$IDLE_FIFO" ]; then
        exec 8<>"$IDLE_FIFO"
        printf '%*s' "$((PEAK_SESSIONS + 1))" '' | tr ' ' '\n' >&8
        exec 8>&-
    fi
    for p in "${CLIENTS[@]}"; do kill -TERM "$p" 2>/dev/null; done
    for p in "${CLIENTS[@]}"; do wait "$p" 2>/dev/null; done
    stop_pid "$DZ_PID"
    stop_pid "$SSHD_PID"
    if [ "$KEEP" = 1 ]; then
        say "== work directory kept: $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

KEY=$WORK/client_key
ssh-keygen -q -t ed25519 -N '' -C dropzone-bench -f "$KEY"

# ---------------------------------------------------------------- servers
# Caps high enough that no step waits on them or is refused. Not 1000 for
# the connection caps: Dropzone plans its descriptors from the open-files
# limit and every connection place it may have to serve, and what is left
# is shared by all SFTP handles (docs/CONFIG.md, [limits]); with a 20000
# limit, 1000/1000 leave 16 handles in all and uploads fail.
DZ_SESSIONS=$((PEAK_SESSIONS + 8 > 600 ? PEAK_SESSIONS + 8 : 600))
DZ_PER_USER=$((PEAK_SESSIONS + 8 > 1000 ? PEAK_SESSIONS + 8 : 1000))
{ dropzone_toml; cat <<EOF

[limits]
max_startups = 200
max_startups_per_source = 1000
max_sessions = $DZ_SESSIONS
max_sessions_per_user = $DZ_PER_USER
penalty = false

[sftp]
max_handles = 256
max_handles_per_user = 1024
EOF
} >"$DZ_DIR/dropzone.toml"
start_dropzone "$BIN" "$DZ_DIR" bench "$KEY.pub"
# Every parallel session holds one handle; the user may hold at most half
# the server-wide handle cap (the start-up line "open files limit").
HANDLES_TOTAL=$(sed -n 's/.*max_handles_total=\([0-9][0-9]*\).*/\1/p' "$DZ_LOG" | head -n1)
[ -n "$HANDLES_TOTAL" ] || { cat "$DZ_LOG" >&2; die "no max_handles_total in Dropzone's start-up log"; }
USER_HANDLES=$((HANDLES_TOTAL / 2 < 1024 ? HANDLES_TOTAL / 2 : 1024))
((USER_HANDLES >= MAXN)) || die "Dropzone allows $USER_HANDLES open handles per user with this open-files limit ($(ulimit -Hn)); $MAXN parallel sessions need $MAXN"

# sshd's default MaxStartups (10:30:100) drops connections at random
# beyond 10 logging in at once: allow every session of a step.
start_sshd "$SSHD_DIR" "$SSHD_HOME" "$KEY.pub" "MaxStartups $((PEAK_SESSIONS + 8))"

declare -A NAME=([d]=Dropzone [o]=OpenSSH)
declare -A PORT=([d]=$DZ_PORT [o]=$SSHD_PORT)
declare -A LOGIN=([d]=bench [o]=$(id -un))
declare -A LOG=([d]=$DZ_LOG [o]=$SSHD_LOG)
declare -A PID=([d]=$DZ_PID [o]=$SSHD_PID)
SSH_OPTS=(-F /dev/null -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null
          -o BatchMode=yes -o IdentitiesOnly=yes -o LogLevel=ERROR -i "$KEY")
sftp_cmd() { CMD=(sftp -b - "${SSH_OPTS[@]}" -P "${PORT[$1]}" "${LOGIN[$1]}@127.0.0.1"); }

alive() {
    local s
    for s in d o; do
        kill -0 "${PID[$s]}" 2>/dev/null && continue
        say "!! the ${NAME[$s]} server (pid ${PID[$s]}) has exited; log tail:"
        tail -n 40 "${LOG[$s]}" | sed 's/^/   | /' >&2
        exit 1
    done
}

# ---------------------------------------------------------------- failures
FAILED=0      # clients that exited non-zero (or never got ready)
CORRUPT=0     # downloads that differ from their source
SHOWN=0
# client_failed SERVER WHAT OUTFILE STATUS : count it; show the first few.
client_failed() {
    FAILED=$((FAILED + 1))
    SHOWN=$((SHOWN + 1))
    ((SHOWN <= 3)) || return 0
    say "!! ${NAME[$1]}: $2 failed (exit status $4); client output:"
    sed 's/^/   | /' "$3" >&2 || true
    say "!! ${NAME[$1]} server log, last 10 lines:"
    tail -n 10 "${LOG[$1]}" | sed 's/^/   | /' >&2 || true
}

# sftp_batch SERVER NAME 'commands' : one untimed session (clean-up).
sftp_batch() {
    local st=0
    sftp_cmd "$1"
    printf '%s\n' "$3" | timeout "$TIMEOUT" "${CMD[@]}" >"$OUT/$2.$1.out" 2>&1 || st=$?
    [ "$st" = 0 ] || client_failed "$1" "$2" "$OUT/$2.$1.out" "$st"
}

# ---------------------------------------------------------------- measures
# server_cpu SERVER : CPU seconds so far, OpenSSH's finished connection
# processes included (waits for sshd to reap them).
CPU_WARNED=0
server_cpu() {
    if [ "$1" = o ] && ! settle_children "${PID[o]}" 10 && [ "$CPU_WARNED" = 0 ]; then
        say "!! sshd still had connection processes 10 s after a step: its CPU times may be too low"
        CPU_WARNED=1
    fi
    proc_cpu "${PID[$1]}"
}

# mem_now SERVER : "RSS_KIB PSS_KIB TASKS" now (Dropzone: one process, its
# threads; OpenSSH: sshd and its descendants, summed, and their number).
mem_now() {
    local r p n
    read -r r p n <<<"$(mem_tree "${PID[$1]}")"
    if [ "$1" = d ]; then
        r=$(status_kib "$DZ_PID" VmRSS)
        n=$(find "/proc/$DZ_PID/task" -mindepth 1 -maxdepth 1 | wc -l)
    fi
    echo "$r $p $n"
}

# sampler SERVER FILE : until ended, keep "PEAK_RSS_KIB PEAK_PSS_KIB" of
# the server (summed over its processes) in FILE, sampled every 0.1 s.
# For Dropzone the RSS peak reported is VmHWM, exact; this is its PSS.
sampler() {
    local mr=0 mp=0 r p _n
    trap 'exit 0' TERM
    while :; do
        read -r r p _n <<<"$(mem_tree "${PID[$1]}")"
        if ((r > mr || p > mp)); then
            ((r > mr)) && mr=$r
            ((p > mp)) && mp=$p
            printf '%s %s\n' "$mr" "$mp" >"$2.tmp" && mv -f "$2.tmp" "$2"
        fi
        sleep 0.1
    done
}
start_sampler() { echo "0 0" >"$2"; sampler "$1" "$2" & SAMPLER_PID=$!; }
stop_sampler() { kill -TERM "$SAMPLER_PID" 2>/dev/null || true; wait "$SAMPLER_PID" 2>/dev/null || true; SAMPLER_PID=; }

# wait_clients SERVER WHAT : wait for every pid in CLIENTS; count failures.
wait_clients() {
    local i st
    for i in "${!CLIENTS[@]}"; do
        st=0; wait "${CLIENTS[$i]}" || st=$?
        [ "$st" = 0 ] || client_failed "$1" "$2 (session $((i + 1)) of ${#CLIENTS[@]})" "$OUT/$2.$1.$((i + 1)).out" "$st"
    done
    CLIENTS=()
}

RES=$WORK/results.txt
: >"$RES"
mibs() { awk -v b="$1" -v a="$2" -v z="$3" 'BEGIN { printf "%.1f", b / 1048576 / (z - a) }'; }
per_gib() { awk -v c0="$1" -v c1="$2" -v b="$3" 'BEGIN { printf "%.2f", (c1 - c0) / (b / 1073741824) }'; }

# ---------------------------------------------------------------- A. parallel
# parallel SERVER N : N sessions put, then N sessions get, at once.
parallel() {
    local s=$1 n=$2 i t0 t1 t2 c0 c1 c2 bytes m0 rb pb rpeak ppeak f0=$FAILED
    bytes=$((n * MIB_EACH * 1048576))
    rm -f "$DL/p1"
    read -r rb pb _ <<<"$(mem_now "$s")"
    [ "$s" = d ] && { hwm_reset "$DZ_PID" || say "!! could not reset VmHWM: Dropzone's peak is its lifetime peak"; }
    start_sampler "$s" "$WORK/peak.$s.$n"
    sftp_cmd "$s"
    c0=$(server_cpu "$s"); t0=$(now)
    for ((i = 1; i <= n; i++)); do
        printf 'put %s p%d\n' "$SRC/par" "$i" | timeout "$TIMEOUT" "${CMD[@]}" >"$OUT/put.$s.$i.out" 2>&1 &
        CLIENTS+=($!)
    done
    wait_clients "$s" put
    t1=$(now); c1=$(server_cpu "$s")
    for ((i = 1; i <= n; i++)); do
        if [ "$i" = 1 ]; then m0="$DL/p1"; else m0=/dev/null; fi
        printf 'get p%d %s\n' "$i" "$m0" | timeout "$TIMEOUT" "${CMD[@]}" >"$OUT/get.$s.$i.out" 2>&1 &
        CLIENTS+=($!)
    done
    wait_clients "$s" get
    t2=$(now); c2=$(server_cpu "$s")
    stop_sampler
    read -r rpeak ppeak <"$WORK/peak.$s.$n"
    [ "$s" = d ] && rpeak=$(status_kib "$DZ_PID" VmHWM)
    if ! cmp -s "$SRC/par" "$DL/p1"; then
        CORRUPT=$((CORRUPT + 1))
        say "!! ${NAME[$s]}: the download of p1 ($n sessions) differs from what was uploaded"
    fi
    rm -f "$DL/p1"
    local rmcmds=""
    for ((i = 1; i <= n; i++)); do rmcmds+="-rm p$i"$'\n'; done
    sftp_batch "$s" rm "$rmcmds"
    # par N SERVER put_MiB/s get_MiB/s cpu/GiB_put cpu/GiB_get rss_before rss_peak pss_before pss_peak failed
    printf 'par %s %s %s %s %s %s %s %s %s %s %s\n' "$n" "$s" "$(mibs "$bytes" "$t0" "$t1")" "$(mibs "$bytes" "$t1" "$t2")" \
        "$(per_gib "$c0" "$c1" "$bytes")" "$(per_gib "$c1" "$c2" "$bytes")" "$rb" "$rpeak" "$pb" "$ppeak" $((FAILED - f0)) >>"$RES"
    say "   parallel n=$n ${NAME[$s]}: put $(mibs "$bytes" "$t0" "$t1") MiB/s ($(per_gib "$c0" "$c1" "$bytes") CPU s/GiB), get $(mibs "$bytes" "$t1" "$t2") MiB/s ($(per_gib "$c1" "$c2" "$bytes") CPU s/GiB); RSS $(mib "$rb") -> peak $(mib "$rpeak") MiB, PSS $(mib "$pb") -> peak $(mib "$ppeak") MiB; failed $((FAILED - f0))"
}

# ---------------------------------------------------------------- B. idle
# count_ready SERVER : idle clients that printed pwd's answer.
count_ready() { { grep -l 'Remote working directory' "$OUT/idle.$1".*.out 2>/dev/null || true; } | wc -l; }

# idle SERVER N : N sessions open at once, each after ls and pwd waiting
# on its input; memory before, once all are open (and HOLD s have passed
# since the first started), and 3 s after all closed.
idle() {
    local s=$1 n=$2 i t0 ready dead rb pb nb rh ph nh ra pa na hwm=0 f0=$FAILED
    [ -p "$IDLE_FIFO" ] || mkfifo "$IDLE_FIFO"
    server_cpu "$s" >/dev/null   # lets sshd reap the last step's processes
    read -r rb pb nb <<<"$(mem_now "$s")"
    [ "$s" = d ] && { hwm_reset "$DZ_PID" || true; }
    sftp_cmd "$s"
    t0=$(now)
    for ((i = 1; i <= n; i++)); do
        # Each session reads one line from the FIFO (opened read-write, so
        # the open does not block) and ends when given it; -t bounds the
        # wait if this script is killed.
        { printf 'ls\npwd\n'; read -r -t $((READY_TIMEOUT + HOLD + 60)) _ <>"$IDLE_FIFO" || true; } \
            | timeout $((READY_TIMEOUT + HOLD + 120)) "${CMD[@]}" >"$OUT/idle.$s.$i.out" 2>&1 &
        CLIENTS+=($!)
    done
    # Ready: the client printed pwd's answer, so it logged in, opened the
    # sftp subsystem and made two requests.
    while :; do
        ready=$(count_ready "$s")
        dead=0
        for i in "${!CLIENTS[@]}"; do kill -0 "${CLIENTS[$i]}" 2>/dev/null || dead=$((dead + 1)); done
        ((ready + dead >= n)) && break
        awk -v a="$t0" -v z="$(now)" -v l="$READY_TIMEOUT" 'BEGIN { exit !(z - a > l) }' && {
            say "!! ${NAME[$s]}: only $ready of $n idle sessions ready after $READY_TIMEOUT s"; break; }
        sleep 0.5
    done
    local t_ready; t_ready=$(awk -v a="$t0" -v z="$(now)" 'BEGIN { printf "%.1f", z - a }')
    sleep 1
    while awk -v a="$t0" -v z="$(now)" -v h="$HOLD" 'BEGIN { exit !(z - a < h) }'; do sleep 0.5; done
    read -r rh ph nh <<<"$(mem_now "$s")"
    [ "$s" = d ] && hwm=$(status_kib "$DZ_PID" VmHWM)
    exec 8<>"$IDLE_FIFO"
    printf '%*s' "$n" '' | tr ' ' '\n' >&8
    wait_clients "$s" idle
    exec 8>&-
    # A client that never printed pwd's answer but exited 0 failed too.
    local missing=$((n - $(count_ready "$s")))
    ((missing > FAILED - f0)) && FAILED=$((f0 + missing))
    sleep 3
    server_cpu "$s" >/dev/null
    read -r ra pa na <<<"$(mem_now "$s")"
    rm -f "$OUT/idle.$s".*.out
    # idle N SERVER rss_before rss_held rss_after pss_before pss_held pss_after tasks_before tasks_held tasks_after hwm ready_s failed
    printf 'idle %s %s %s %s %s %s %s %s %s %s %s %s %s %s\n' "$n" "$s" "$rb" "$rh" "$ra" "$pb" "$ph" "$pa" "$nb" "$nh" "$na" "$hwm" "$t_ready" $((FAILED - f0)) >>"$RES"
    say "   idle n=$n ${NAME[$s]}: all open after $t_ready s; RSS $(mib "$rb") -> $(mib "$rh") -> $(mib "$ra") MiB, PSS $(mib "$pb") -> $(mib "$ph") -> $(mib "$pa") MiB (before, held, 3 s after); threads/processes $nb -> $nh -> $na; failed $((FAILED - f0))"
}

# ---------------------------------------------------------------- the run
say "== generating $MIB_EACH MiB of test data"
head -c $((MIB_EACH * 1048576)) /dev/urandom >"$SRC/par"

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
read -r DZ_START_RSS DZ_START_PSS _ <<<"$(mem_now d)"
read -r OS_START_RSS OS_START_PSS _ <<<"$(mem_now o)"
T_START=$(now)
step=0
# ORDER: the servers of the next step, alternating which goes first.
next_order() { if ((step % 2)); then ORDER="o d"; else ORDER="d o"; fi; step=$((step + 1)); }
# The idle step first, on servers that have served only a few sessions:
# after the parallel steps an allocator may keep freed memory that idle
# sessions would reuse, which would hide both their cost and what is not
# given back. Those few sessions come first because the code of a login
# is paged in (from the binary, counted in RSS) the first time it runs:
# memory a fresh server gains once, not memory a burst leaves behind.
if ((IDLE > 0)); then
    next_order; servers=$ORDER
    for s in $servers; do
        for i in 1 2 3 4; do sftp_batch "$s" "warm-up.$i" 'ls'; done
    done
    say "== idle: $IDLE sessions held open (${servers/ /, then })"
    for s in $servers; do idle "$s" "$IDLE"; alive; done
fi
for n in $SESSIONS; do
    next_order; servers=$ORDER
    say "== parallel: $n sessions x $MIB_EACH MiB (${servers/ /, then })"
    for s in $servers; do parallel "$s" "$n"; alive; done
done
T_END=$(now)

# ---------------------------------------------------------------- report
# field KIND N SERVER COLUMN : one figure of results.txt (columns from 1 = KIND).
field() { awk -v k="$1" -v n="$2" -v s="$3" -v c="$4" '$1 == k && $2 == n && $3 == s { print $c; exit }' "$RES"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "-" }'; }
per_session() { # per_session BEFORE_KIB AFTER_KIB N UNIT(MiB|KiB)
    awk -v a="$1" -v b="$2" -v n="$3" -v u="$4" 'BEGIN { d = (b - a) / n; if (u == "MiB") printf "%.2f", d / 1024; else printf "%.0f", d }'
}
dash() { printf -- '-%.0s' $(seq 1 "$1"); }
{
    echo
    echo "Many sessions: Dropzone vs OpenSSH sshd (internal-sftp), loopback, tmpfs; OpenSSH sftp client"
    report_header "$ROOT"
    echo "load:     $LOAD_BEFORE before the runs (1/5/15 min load average; other work on the machine skews the figures)"
    echo "steps:    parallel: --sessions \"$SESSIONS\" x --mib $MIB_EACH, put then get; idle: $( ((IDLE > 0)) && echo "--idle $IDLE sessions held >= $HOLD s" || echo "none (--idle 0)");"
    echo "          each step for both servers, alternating which goes first"
    echo "dropzone: [limits] max_startups 200, max_sessions $DZ_SESSIONS, max_sessions_per_user $DZ_PER_USER, penalty off;"
    echo "          $(sed -n 's/.*open_files_limit=\([0-9]*\).*/open files limit \1/p' "$DZ_LOG" | head -n1), $HANDLES_TOTAL SFTP handles in all; sshd: MaxStartups $((PEAK_SESSIONS + 8))"
    echo
    echo "A. Parallel sessions: MiB/s = MiB moved by all sessions / wall time until the last ended;"
    echo "   CPU = server user + system seconds per GiB moved (OpenSSH's connection processes included)."
    echo
    printf '| %-16s | %-4s | %14s | %13s | %18s | %17s | %16s |\n' sessions dir "Dropzone MiB/s" "OpenSSH MiB/s" "Dropzone CPU s/GiB" "OpenSSH CPU s/GiB" "CPU OpenSSH/Dz"
    printf '|%s|%s|%s:|%s:|%s:|%s:|%s:|\n' "$(dash 18)" "$(dash 6)" "$(dash 15)" "$(dash 14)" "$(dash 19)" "$(dash 18)" "$(dash 17)"
    for n in $SESSIONS; do
        for dir in put get; do
            if [ "$dir" = put ]; then m=4; c=6; else m=5; c=7; fi
            cd_=$(field par "$n" d "$c"); co=$(field par "$n" o "$c")
            printf '| %-16s | %-4s | %14s | %13s | %18s | %17s | %16s |\n' "$n x $MIB_EACH MiB" "$dir" \
                "$(field par "$n" d "$m")" "$(field par "$n" o "$m")" "$cd_" "$co" "$(ratio "$co" "$cd_")"
        done
    done
    echo
    echo "   Server memory over each parallel step (put and get): before it, peak (sampled every 0.1 s;"
    echo "   Dropzone RSS: VmHWM reset with clear_refs), per session = (peak - before) / sessions."
    echo "   PSS shares each page among the processes mapping it: summed RSS would count sshd's shared pages once per process."
    echo
    printf '| %-8s | %-36s | %10s | %10s | %15s |\n' sessions memory "before MiB" "peak MiB" "per session MiB"
    printf '|%s|%s|%s:|%s:|%s:|\n' "$(dash 10)" "$(dash 38)" "$(dash 11)" "$(dash 11)" "$(dash 16)"
    for n in $SESSIONS; do
        for row in "d 8 9 Dropzone RSS (one process)" "d 10 11 Dropzone PSS" "o 10 11 OpenSSH PSS (sshd + its processes)"; do
            read -r s cb cp label <<<"$row"
            b=$(field par "$n" "$s" "$cb"); p=$(field par "$n" "$s" "$cp")
            printf '| %-8s | %-36s | %10s | %10s | %15s |\n' "$n" "$label" "$(mib "$b")" "$(mib "$p")" "$(per_session "$b" "$p" "$n" MiB)"
        done
    done
    if ((IDLE > 0)); then
        echo
        echo "B. Idle sessions (run before A, after 4 warm-up sessions per server): $IDLE open at once (each ran ls"
        echo "   and pwd, then waited), memory before, while all were open, per session = (held - before) / $IDLE,"
        echo "   and 3 s after they all closed."
        echo
        printf '| %-36s | %10s | %10s | %15s | %15s | %12s |\n' memory "before MiB" "held MiB" "per session KiB" "3 s after MiB" "after/before"
        printf '|%s|%s:|%s:|%s:|%s:|%s:|\n' "$(dash 38)" "$(dash 11)" "$(dash 11)" "$(dash 16)" "$(dash 16)" "$(dash 13)"
        for row in "d 4 5 6 Dropzone RSS (one process)" "d 7 8 9 Dropzone PSS" "o 7 8 9 OpenSSH PSS (sshd + its processes)"; do
            read -r s cb ch ca label <<<"$row"
            b=$(field idle "$IDLE" "$s" "$cb"); h=$(field idle "$IDLE" "$s" "$ch"); a=$(field idle "$IDLE" "$s" "$ca")
            printf '| %-36s | %10s | %10s | %15s | %15s | %12s |\n' "$label" "$(mib "$b")" "$(mib "$h")" "$(per_session "$b" "$h" "$IDLE" KiB)" "$(mib "$a")" "$(ratio "$a" "$b")"
        done
        echo
        echo "   all $IDLE open after: Dropzone $(field idle "$IDLE" d 14) s, OpenSSH $(field idle "$IDLE" o 14) s;" \
             "while open: Dropzone $(field idle "$IDLE" d 11) threads, sshd $(field idle "$IDLE" o 11) processes;" \
             "Dropzone peak RSS during the logins $(mib "$(field idle "$IDLE" d 13)") MiB"
        dra=$(field idle "$IDLE" d 6); drb=$(field idle "$IDLE" d 4)
        echo "   Dropzone RSS 3 s after the idle sessions closed: $(ratio "$dra" "$drb") of before (goal: within 1.2x:" \
             "$(awk -v a="$dra" -v b="$drb" 'BEGIN { print (a <= 1.2 * b ? "met" : "NOT met") }'))"
    fi
    echo
    echo "at start-up: Dropzone RSS $(mib "$DZ_START_RSS") MiB, PSS $(mib "$DZ_START_PSS") MiB; sshd PSS $(mib "$OS_START_PSS") MiB (RSS $(mib "$OS_START_RSS") MiB)"
    # A transfer can succeed while the server logs a problem: show any.
    for s in d o; do
        if [ "$s" = d ]; then pat='WARN|ERROR|panick'; else pat='error|fatal|[Ff]ailed'; fi
        c=$(grep -Ec "$pat" "${LOG[$s]}" || true)
        echo "${NAME[$s]} server log: $c line(s) matching /$pat/"
        grep -E "$pat" "${LOG[$s]}" | head -n 10 | sed 's/^/    /' || true
    done
    awk '($1 == "par" && $12 > 0) || ($1 == "idle" && $15 > 0) {
        printf "FAILED: %s clients in the %s step of %s sessions against %s\n", ($1 == "par" ? $12 : $15), $1, $2, ($3 == "d" ? "Dropzone" : "OpenSSH") }' "$RES"
    echo "total time: $(awk -v a="$T_START" -v z="$T_END" 'BEGIN { printf "%.0f s", z - a }'); failed clients: $FAILED; downloads differing: $CORRUPT"
}
if ((FAILED > 0 || CORRUPT > 0)); then
    say "!! sessions.sh: $FAILED client(s) failed, $CORRUPT download(s) differed: the figures above are not valid"
    exit 1
fi
