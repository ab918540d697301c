"""The peer of the manager's loop-lag figures: a bare event loop, idle and
beside two busy pure-Python threads, measured with the manager's own
monitor (manager/lag.py) and switch interval (1 ms):

    .venv/bin/python bench/loop_lag_baseline.py

On a machine whose cores are oversubscribed, a thread that holds the GIL is
descheduled for a while and the loop waits however short the switch
interval: this shows how much of a manager's lag the machine alone causes.
"""

import asyncio
import sys
import threading

sys.setswitchinterval(0.001)
from pyswarm.manager.lag import LoopLag


def busy(stop: threading.Event) -> None:
    x = 0
    while not stop.is_set():
        for i in range(1000): x += i


async def main() -> None:
    lag = LoopLag()
    t = asyncio.create_task(lag.run())
    await asyncio.sleep(5); print("idle", lag.stats())
    t.cancel()
    lag2 = LoopLag()
    t2 = asyncio.create_task(lag2.run())
    stop = threading.Event()
    threads = [threading.Thread(target=busy, args=(stop,)) for _ in range(2)]
    for th in threads:
        th.start()
    await asyncio.sleep(10)
    stop.set()
    for th in threads:
        th.join()
    t2.cancel()
    print("2 busy threads", lag2.stats())


if __name__ == "__main__":
    asyncio.run(main())
