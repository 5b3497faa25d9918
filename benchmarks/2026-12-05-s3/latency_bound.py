"""The lowest produce p99 any flush policy can reach within a PUT budget, under the
sluice-s3-proxy latency profiles (log-normal PUT latency fitted to p50/p99).

A record waits for its object to be cut (uniform over the gap between cuts) and then for the
object's PUT, or for a hedged copy sent when the first PUT passes a percentile of the PUT
latency. Hedged copies count against the budget, which widens the gap. Commit time, CPU and
ordering between objects are left out, so real figures can only be higher.

    python3 latency_bound.py [PUTS_PER_GB] [MB_PER_S] [OBJECT_STREAMS]
"""
import math
import random
import sys

Z99 = 2.3263
PROFILES = {"s3-standard": (100.0, 400.0), "s3-express": (6.0, 20.0)}
N = 200_000


def sample(p50, p99):
    return math.exp(random.gauss(math.log(p50), math.log(p99 / p50) / Z99))


def pct(values, q):
    return sorted(values)[int(q / 100 * len(values))]


def main():
    puts_per_gb = float(sys.argv[1]) if len(sys.argv) > 1 else 300
    mb_per_s = float(sys.argv[2]) if len(sys.argv) > 2 else 50
    streams = int(sys.argv[3]) if len(sys.argv) > 3 else 1  # shards cutting their own objects
    puts_per_s = puts_per_gb * mb_per_s / 1000
    random.seed(1)
    print(f"{puts_per_gb:.0f} PUTs/GB at {mb_per_s:.0f} MB/s = {puts_per_s:.1f} PUTs/s, {streams} object stream(s)")
    for name, (p50, p99) in PROFILES.items():
        base = [sample(p50, p99) for _ in range(N)]
        for q in [None, 25, 50, 75, 90, 95]:
            threshold = None if q is None else pct(base, q)
            put, hedged = [], 0
            for _ in range(N):
                x = sample(p50, p99)
                if threshold is not None and x > threshold:
                    hedged += 1
                    x = min(x, threshold + sample(p50, p99))
                put.append(x)
            extra = hedged / N
            gap_ms = 1000 * streams * (1 + extra) / puts_per_s
            produce = [p + random.uniform(0, gap_ms) for p in put]
            hedge = "off" if q is None else f"p{q}"
            print(f"{name:12} hedge {hedge:4} +{100 * extra:3.0f}% PUTs  cut every {gap_ms:4.0f} ms  "
                  f"PUT p99 {pct(put, 99):4.0f} ms  produce p99 >= {pct(produce, 99):4.0f} ms")


if __name__ == "__main__":
    main()
