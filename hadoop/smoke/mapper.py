#!/usr/bin/env python3
"""Word-count mapper for the hadoop-dev smoke test: emits "word<TAB>1".

Words listed in stopwords.txt are skipped; that file is shipped with `-files` and must be found in
the task's working directory (proves the distributed cache works)."""
import os
import sys

with open("stopwords.txt", encoding="utf-8") as fh:  # from -files (distributed cache)
    stop = {w.strip() for w in fh if w.strip()}

print(f"mapper pid {os.getpid()} input={os.environ.get('mapreduce_map_input_file', '?')}",
      file=sys.stderr)
for line in sys.stdin:
    for word in line.lower().split():
        if word not in stop:
            print(f"{word}\t1")
