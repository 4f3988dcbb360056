"""Checks a CPython layout of the agent's table (agent/src/probes/python.rs)
against the interpreter running this script.

    python3 python_layout.py GIL_HOLDER CONTEXT

GIL_HOLDER: offset in _PyRuntime of the pointer to the PyThreadState that
holds the GIL; CONTEXT: offset of PyThreadState.context. Prints the
release and exits 0 if both hold for the main thread and two others
(while each runs Python code, so holds the GIL), else exits 1.
"""

import contextvars
import ctypes
import sys
import threading

api = ctypes.pythonapi
api.PyThreadState_Get.restype = ctypes.c_void_p
RUNTIME = ctypes.addressof(ctypes.c_char.in_dll(api, "_PyRuntime"))
GIL_HOLDER, CONTEXT = int(sys.argv[1]), int(sys.argv[2])


def word(address):
    return ctypes.c_void_p.from_address(address).value


def check():
    state = api.PyThreadState_Get()
    context = contextvars.Context()
    entered = context.run(lambda: word(state + CONTEXT))
    return word(RUNTIME + GIL_HOLDER) == state and entered == id(context)


results = [check()]
threads = [threading.Thread(target=lambda: results.append(check())) for _ in range(2)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(sys.version.split()[0], "ok" if all(results) else f"mismatch {results}")
sys.exit(0 if all(results) else 1)
