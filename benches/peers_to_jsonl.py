"""dynsig trend snapshots (signals.trends.jsonl) -> the peers' output format
({"window_start", "events", "top": [[token, count], ...]}), for ../shared/peers/compare.py.
Usage: peers_to_jsonl.py SNAPSHOTS OUT"""
import json, sys

with open(sys.argv[1]) as src, open(sys.argv[2], "w") as out:
    for line in src:
        s = json.loads(line)
        if not s["final"]:
            continue
        top = [[e["term"], e["count"]] for e in s["entries"]]
        out.write(json.dumps({"window_start": s["window_start"], "events": s["events"], "top": top},
                             separators=(",", ":")) + "\n")
