#!/usr/bin/env bash
# End-to-end check of the bin/hadoop-dev cluster (used by CI):
#   WebHDFS mkdir / put through the DataNode redirect / read back; a Hadoop Streaming word count with
#   Python mapper+combiner+reducer over many input files with -files (distributed cache) on YARN and
#   with LocalJobRunner; a deliberately failing mapper on YARN (stderr found through the JobHistory +
#   NodeManager REST APIs and on disk) and with LocalJobRunner (stderr in the client output).
#
# Starts the cluster if it is not up, and then stops it again at the end (SMOKE_KEEP_UP=1 keeps it).
# SMOKE_PYTHON: interpreter for the tasks (default: the real path of python3, pyenv shims resolved).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SMOKE="$ROOT/hadoop/smoke"
DEV="${HADOOP_DEV_DIR:-$ROOT/.hadoop-dev}"
PY="${SMOKE_PYTHON:-$(python3 -c 'import sys; print(sys.executable)')}"
WORK="$(mktemp -d /tmp/hadoop-smoke.XXXXXX)"
MARKER="HADOOP-DEV-SMOKE deliberate failure"
declare -a SUMMARY=()
started=0

say() { printf '\n### %s\n' "$*"; }
fail() { printf '\nSMOKE TEST FAILED: %s\n' "$*" >&2; exit 1; }
now() { date +%s.%N; }
since() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$(now)"; }

cleanup() {
  local rc=$?
  if ((started)) && [[ "${SMOKE_KEEP_UP:-0}" != 1 ]]; then
    say "stopping the cluster this script started"
    "$ROOT/bin/hadoop-dev" down || rc=1
    local left="" p c
    for p in /proc/[0-9]*; do
      c="$(tr '\0' ' ' 2>/dev/null <"$p/cmdline" || true)"
      [[ "$c" == *"$DEV/"* ]] && left+=" ${p#/proc/}"
    done
    if [[ -n "$left" ]]; then echo "processes still running from $DEV:$left" >&2; rc=1
    else echo "no process left running from $DEV"; fi
    ss -Htln | grep -E ':(8020|9870|9864|8032|8088|10020|19888|8042)\b' && { echo "ports still bound" >&2; rc=1; }
  fi
  rm -rf "$WORK"
  if ((${#SUMMARY[@]})); then
    printf '\n### summary\n'; printf '  %s\n' "${SUMMARY[@]}"
  fi
  ((rc == 0)) && echo "SMOKE TEST PASSED" || echo "SMOKE TEST FAILED (rc=$rc)"
  exit $rc
}
trap cleanup EXIT

if ! "$ROOT/bin/hadoop-dev" status >/dev/null 2>&1; then
  say "bin/hadoop-dev up"
  t=$(now)
  "$ROOT/bin/hadoop-dev" up
  started=1
  SUMMARY+=("bin/hadoop-dev up: $(since "$t")s")
fi
# shellcheck disable=SC1091
. "$DEV/env"
W="$HADOOP_DEV_WEBHDFS"
RUN="/smoke/run-$(date +%s)-$$"
echo "task python: $PY; HDFS work dir: $RUN"

# ---------------------------------------------------------------------------------------------
say "WebHDFS: mkdir, create through the DataNode redirect, read back, list"
curl -sf -X PUT "$W$RUN/webhdfs?op=MKDIRS" | grep -q '"boolean":true' || fail "MKDIRS"
printf 'hello webhdfs\nsecond line\n' >"$WORK/hello.txt"
# step 1: the NameNode answers 307 with the DataNode URL (no data sent yet)
loc="$(curl -s -i -X PUT "$W$RUN/webhdfs/hello.txt?op=CREATE&overwrite=true" \
       | awk 'tolower($1) == "location:" {print $2}' | tr -d '\r')"
echo "redirected to: $loc"
[[ "$loc" == http://127.0.0.1:9864/webhdfs/v1/* ]] || fail "CREATE did not redirect to the DataNode on :9864"
# step 2: send the bytes to the DataNode
code="$(curl -s -o /dev/null -w '%{http_code}' -X PUT -T "$WORK/hello.txt" "$loc")"
[[ "$code" == 201 ]] || fail "DataNode CREATE returned $code"
curl -sfL "$W$RUN/webhdfs/hello.txt?op=OPEN" | cmp - "$WORK/hello.txt" || fail "OPEN content differs"
curl -sf "$W$RUN/webhdfs?op=LISTSTATUS" | grep -q '"pathSuffix":"hello.txt"' || fail "LISTSTATUS"
echo "WebHDFS OK"

# ---------------------------------------------------------------------------------------------
say "upload 12 input files (curl -L -T follows the redirect in one call)"
NFILES=12
mkdir -p "$WORK/in"
python3 - "$WORK/in" "$NFILES" <<'EOF'
import random, sys
words = "the a of red green blue cyan magenta yellow black white pixel colour cluster".split()
rnd = random.Random(42)
for i in range(int(sys.argv[2])):
    with open(f"{sys.argv[1]}/part-{i:02d}.txt", "w") as fh:
        for _ in range(200):
            fh.write(" ".join(rnd.choice(words) for _ in range(8)) + f" file{i}\n")
EOF
for f in "$WORK"/in/*.txt; do
  code="$(curl -s -o /dev/null -w '%{http_code}' -L -X PUT -T "$f" "$W$RUN/in/$(basename "$f")?op=CREATE&overwrite=true")"
  [[ "$code" == 201 ]] || fail "upload $f: HTTP $code"
done
# expected word counts (same logic as mapper.py with stopwords.txt)
python3 - "$WORK/in" "$SMOKE/stopwords.txt" >"$WORK/expected.txt" <<'EOF'
import collections, glob, sys
stop = {w.strip() for w in open(sys.argv[2]) if w.strip()}
c = collections.Counter(w for f in glob.glob(sys.argv[1] + "/*.txt") for line in open(f)
                        for w in line.lower().split() if w not in stop)
for w in sorted(c):
    print(f"{w}\t{c[w]}")
EOF

streaming() {  # streaming LOGFILE generic-and-streaming-args...
  local log="$1"; shift
  "$JAVA_HOME/bin/java" $HADOOP_DEV_JAVA_OPTS -cp "$HADOOP_DEV_CLASSPATH" \
    org.apache.hadoop.streaming.HadoopStreaming "$@" >"$log" 2>&1
}

wordcount() {  # wordcount FRAMEWORK
  local fw="$1" out="$RUN/out-$1" log="$WORK/wc-$1.log" t rc=0
  say "streaming word count, mapreduce.framework.name=$fw"
  t=$(now)
  streaming "$log" \
    -D mapreduce.framework.name="$fw" \
    -D mapreduce.job.name="smoke-wordcount-$fw" \
    -D mapreduce.job.reduces=1 \
    -files "$SMOKE/mapper.py,$SMOKE/reducer.py,$SMOKE/stopwords.txt" \
    -input "$RUN/in" -output "$out" \
    -mapper "$PY mapper.py" -combiner "$PY reducer.py" -reducer "$PY reducer.py" || rc=$?
  local secs; secs="$(since "$t")"
  ((rc == 0)) || { tail -n 40 "$log"; fail "word count ($fw) exited $rc"; }
  grep -E "Submitted application|url to track|Running job|completed successfully" "$log" | cut -c1-160 || true
  grep -q "Total input files to process : $NFILES" "$log" || fail "job did not see $NFILES input files"
  grep -q "Combine input records=" "$log" || fail "combiner did not run"
  curl -sfL "$W$out/part-00000?op=OPEN" | sort >"$WORK/got-$fw.txt"
  diff -u "$WORK/expected.txt" "$WORK/got-$fw.txt" || fail "word count ($fw) output differs from expected"
  echo "word count ($fw) OK in ${secs}s"
  SUMMARY+=("streaming word count, $NFILES files, framework=$fw: ${secs}s")
}
wordcount yarn
wordcount local

# ---------------------------------------------------------------------------------------------
say "failing mapper on YARN (mapreduce.map.maxattempts=1)"
log="$WORK/fail-yarn.log"; rc=0; t=$(now)
streaming "$log" \
  -D mapreduce.job.name=smoke-failing-yarn \
  -D mapreduce.map.maxattempts=1 \
  -files "$SMOKE/failing_mapper.py" \
  -input "$RUN/in/part-00.txt" -output "$RUN/out-fail-yarn" \
  -mapper "$PY failing_mapper.py" -reducer NONE || rc=$?
secs="$(since "$t")"
((rc != 0)) || fail "failing job exited 0"
echo "client exit status $rc after ${secs}s; client output says:"
grep -E "Submitted application|url to track|Status : FAILED|failed with state|Job not successful|^Error:" "$log" | cut -c1-200 || true
if grep -q "$MARKER" "$log"; then echo "(the task's stderr text IS in the client output)"; else echo "(the task's stderr text is NOT in the client output)"; fi
app="$(grep -o 'Submitted application application_[0-9_]*' "$log" | awk '{print $3}')"
[[ -n "$app" ]] || fail "no application id in the client output"
echo "--- hadoop/smoke/failed_task_stderr.py --client-log (JobHistory REST -> NodeManager REST):"
python3 "$SMOKE/failed_task_stderr.py" --client-log "$log" | tee "$WORK/fail-yarn-stderr.txt"
grep -q "$MARKER" "$WORK/fail-yarn-stderr.txt" || fail "failing task's stderr not found through REST"
echo "--- on disk:"
grep -l "$MARKER" "$HADOOP_DEV_USERLOGS/$app"/container_*/stderr || fail "stderr not in $HADOOP_DEV_USERLOGS/$app/*/stderr"
SUMMARY+=("failing mapper on YARN (1 attempt): client exit $rc after ${secs}s; stderr via REST and $HADOOP_DEV_USERLOGS/$app/<container>/stderr")

say "failing mapper with LocalJobRunner"
log="$WORK/fail-local.log"; rc=0; t=$(now)
streaming "$log" \
  -D mapreduce.framework.name=local \
  -files "$SMOKE/failing_mapper.py" \
  -input "$RUN/in/part-00.txt" -output "$RUN/out-fail-local" \
  -mapper "$PY failing_mapper.py" -reducer NONE || rc=$?
secs="$(since "$t")"
((rc != 0)) || fail "failing local job exited 0"
grep -q "$MARKER" "$log" || fail "LocalJobRunner: the task's stderr is not in the client output"
echo "client exit status $rc after ${secs}s; the task's stderr is in the client's stderr:"
grep -A2 "$MARKER" "$log"
SUMMARY+=("failing mapper with LocalJobRunner: client exit $rc after ${secs}s; stderr in client output")

curl -sf -X DELETE "$W$RUN?op=DELETE&recursive=true" >/dev/null || true
