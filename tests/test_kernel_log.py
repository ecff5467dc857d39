"""The endpoint's request log and the package's background-thread logs go to
the kernel log (the process's stderr), never into a cell's output (issue 17:
'WARNING:tornado.access:404 POST …' leaked into cells)."""

from __future__ import annotations

import json

from kernel_driver import Kernel

CELL = """
import json, logging, threading, urllib.request, urllib.error
info = json.load(open({endpoint!r}))
for path in ("/no/such/route", "/runs/nope"):
    req = urllib.request.Request(info["url"] + path, data=b"{{}}", method="POST",
                                 headers={{"Authorization": "token " + info["token"]}})
    try:
        urllib.request.urlopen(req, timeout=5)
    except urllib.error.HTTPError as exc:
        print("status", exc.code)
t = threading.Thread(target=lambda: logging.getLogger("fm_kernel.flows.journal").error("boom-in-thread"))
t.start(); t.join()
import time; time.sleep(0.3)
"""


def test_request_and_thread_logs_stay_out_of_cell_outputs(history):
    endpoint = str(history) + ".endpoint.json"
    with Kernel(env={"FM_HISTORY": str(history)}) as k:
        assert k.execute("x = 1").status == "ok"  # the history (and endpoint) are open
        r = k.execute(CELL.format(endpoint=endpoint))
        assert r.status == "ok", r.content
        text = json.dumps([m["content"] for m in r.outputs()])
        assert "status 404" in r.text()  # the requests did reach the endpoint
        assert "tornado" not in text and "boom-in-thread" not in text and "POST" not in text, text
