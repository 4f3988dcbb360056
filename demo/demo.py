#!/usr/bin/env python3
"""Sonde demo: starts two unmodified services (a Python frontend calling a
Node.js backend), starts the agent selecting them by port, drives traffic with
curl, and shows the spans the agent prints. Needs root (the agent loads eBPF
programs). Run through `cargo xtask demo`, which builds the agent first."""
import argparse
import os
import signal
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd, env=None):
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    line = proc.stdout.readline()
    if not line.startswith("listening on"):
        sys.exit(f"{cmd[0]} did not start: {line!r}")
    return proc


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--agent", required=True, help="path of the sonde binary")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of traffic")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("the demo needs root: the agent loads eBPF programs")

    backend_port, frontend_port, redis_port = free_port(), free_port(), free_port()
    env = dict(os.environ)
    # The cart store: a throwaway redis-server (installed by `cargo xtask setup`).
    redis = subprocess.Popen(["redis-server", "--bind", "127.0.0.1", "--port", str(redis_port), "--save", "",
                              "--appendonly", "no"], stdout=subprocess.DEVNULL)
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", redis_port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.05)
    backend = start(["node", os.path.join(ROOT, "tests/apps/http_server.js"), str(backend_port)],
                    env={**env, "OTEL_SERVICE_NAME": "backend"})
    frontend = start([sys.executable, os.path.join(HERE, "frontend.py"), "--port", str(frontend_port),
                      "--backend", f"http://127.0.0.1:{backend_port}", "--redis", str(redis_port)], env={**env, "OTEL_SERVICE_NAME": "frontend"})
    print(f"frontend (python) on :{frontend_port}, backend (node) on :{backend_port}, "
          f"redis on :{redis_port}", flush=True)

    agent = subprocess.Popen([args.agent, "run", "--port", f"{frontend_port},{backend_port}", "--print"],
                             stderr=subprocess.PIPE, text=True)
    for line in agent.stderr:
        sys.stderr.write(line)
        if "agent running" in line:
            break
    else:
        sys.exit("the agent did not start")
    time.sleep(1)

    deadline = time.time() + args.duration
    sent = 0
    try:
        while time.time() < deadline:
            path = "/checkout?fail=1" if sent % 5 == 4 else "/checkout"
            subprocess.run(["curl", "-s", "-o", "/dev/null", f"http://127.0.0.1:{frontend_port}{path}"], check=False)
            sent += 1
            time.sleep(0.5)
        time.sleep(1.5)
    finally:
        agent.send_signal(signal.SIGINT)
        try:
            agent.wait(timeout=15)
        except subprocess.TimeoutExpired:
            agent.kill()
        for proc in (frontend, backend, redis):
            proc.terminate()
            proc.wait()
    print(f"\nsent {sent} checkout requests; each is one trace: 1 frontend SERVER span, its 2 Redis CLIENT "
          "spans (HGETALL, INCRBY: db.system.name=redis, arguments as ?) and 2 HTTP CLIENT spans, and under "
          "each HTTP one a backend SERVER span (same TRACE ID, PARENT = the caller's SPAN ID)",
          flush=True)
    return agent.returncode or 0


if __name__ == "__main__":
    sys.exit(main())
