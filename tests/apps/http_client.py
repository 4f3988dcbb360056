#!/usr/bin/env python3
"""HTTP client for tests: waits, then sends requests with urllib (one
connection per request) and prints each status. Unmodified by any tracing.

usage: http_client.py --wait 1.5 URL [URL...]
"""
import argparse
import time
import urllib.error
import urllib.request


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--wait", type=float, default=0)
    parser.add_argument("urls", nargs="+")
    args = parser.parse_args()
    time.sleep(args.wait)
    for url in args.urls:
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                response.read()
                print(response.status, flush=True)
        except urllib.error.HTTPError as error:
            print(error.code, flush=True)


if __name__ == "__main__":
    main()
