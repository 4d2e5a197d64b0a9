#!/usr/bin/env python3
"""A bounded load run against `ldmlab serve` on loopback (stdlib only; stops by itself).

Starts the server (--max-batch B, port 0), waits for /readyz, then C client threads each POST R requests (distinct
seeds, so the result cache never answers) and wait for each job's SSE stream to end. Prints one JSON line per max
batch: images/s, p50/p95/p99 latency (POST → terminal event), states seen, and the server's batch-size histogram.
SIGTERM stops each server (it drains). Usage:
    scripts/serve_load.py --model data/checkpoints/fashion-text2img --batches 1,4 --clients 8 --requests 4 --steps 10
"""
import argparse, json, os, re, signal, statistics, subprocess, sys, threading, time, urllib.request

here = os.path.dirname(os.path.abspath(__file__))
dll = os.path.join(here, "..", "lib", "LdmLab.Cli", "bin", "Release", "net10.0", "LdmLab.Cli.dll")


def post(base, body):
    req = urllib.request.Request(base + "/v1/images", json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.load(r)


def wait_events(base, job_id):
    with urllib.request.urlopen(f"{base}/v1/jobs/{job_id}/events", timeout=600) as r:
        last = None
        for line in r:
            line = line.decode().strip()
            if line.startswith("event: "):
                last = line[7:]
        return last


def run(args, batch):
    server = subprocess.Popen(["dotnet", dll, "serve", "--model", args.model, "--port", "0", "--max-batch",
                               str(batch), "--queue", "1000", "--preview-every", "0"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        line = server.stderr.readline()
        m = re.search(r"at (http://\S+)", line)
        if not m:
            raise SystemExit(f"the server did not start: {line}{server.stderr.read()}")
        base = m.group(1).rstrip("/")
        latencies, states, lock = [], {}, threading.Lock()

        def client(c):
            for i in range(args.requests):
                t0 = time.perf_counter()
                job = post(base, {"prompt": args.prompt, "steps": args.steps, "guidance": 5,
                                  "seed": 1000 * c + i + 7919 * batch})
                state = wait_events(base, job["id"])
                with lock:
                    latencies.append(time.perf_counter() - t0)
                    states[state] = states.get(state, 0) + 1

        t0 = time.perf_counter()
        threads = [threading.Thread(target=client, args=(c,)) for c in range(args.clients)]
        for t in threads: t.start()
        for t in threads: t.join()
        wall = time.perf_counter() - t0
        metrics = urllib.request.urlopen(base + "/metrics").read().decode()
        buckets = re.findall(r'ldmlab_batch_size_bucket\{le="([^"]+)"\} (\d+)', metrics)
        q = statistics.quantiles(latencies, n=100)
        print(json.dumps({"max_batch": batch, "clients": args.clients, "requests": len(latencies),
                          "steps": args.steps, "images_per_s": round(len(latencies) / wall, 2),
                          "p50_s": round(q[49], 3), "p95_s": round(q[94], 3), "p99_s": round(q[98], 3),
                          "states": states, "batch_size_buckets": dict(buckets)}), flush=True)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="data/checkpoints/fashion-text2img")
    p.add_argument("--batches", default="1,4")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=4)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--prompt", default="a bag on the left and a sneaker on the right")
    args = p.parse_args()
    for b in map(int, args.batches.split(",")):
        run(args, b)


if __name__ == "__main__":
    sys.exit(main())
