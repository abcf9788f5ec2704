"""Posts that keep N distinct terms alive, to measure memory per live term.
Usage: live_terms.py N OUT [WINDOWS]
Each of WINDOWS (default 10) one-minute windows brings N/WINDOWS new terms, each used
twice (so each gets a baseline: a count of 1 equals the new-term prior and is not kept),
two terms per post. Baselines decay for ~13 windows before being pruned, so after the
last window all N terms are live."""
import json, sys

n, out = int(sys.argv[1]), sys.argv[2]
windows = int(sys.argv[3]) if len(sys.argv) > 3 else 10
per_window = n // windows
start = 1_767_225_600_000
with open(out, "w") as f:
    for w in range(windows):
        posts = per_window  # per_window terms x 2 uses / 2 terms per post
        for i in range(posts):
            a = w * per_window + i
            b = w * per_window + (i + 1) % per_window
            ts = start + w * 60_000 + i * 60_000 // posts
            f.write(json.dumps({"ts": ts, "author": f"a{i % 1000}", "text": f"t{a} t{b}"}) + "\n")
