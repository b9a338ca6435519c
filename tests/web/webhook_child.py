"""A bot process that dies with a job waiting on its webhook: `python -m tests.web.webhook_child CONFIG.json`.

It runs the real lifecycle and web side (`tests.web.test_webhooks.web_process`) on the test's database and port,
submits one job to the configured provider, prints the job's id once the provider has it, then waits to be
killed with SIGKILL: no clean shutdown, only what is on disk (the job, its handle and its callback) survives.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from pathlib import Path

from tests.core.test_lifecycle import until
from tests.web.test_webhooks import web_process


async def main(config_path: str) -> None:
    config = json.loads(Path(config_path).read_text())  # noqa: ASYNC240 - once, before anything runs
    logging.basicConfig(level=logging.INFO, format="%(asctime)s child %(levelname)s %(name)s: %(message)s")
    async with web_process(Path(config["db"]), port=config["port"], fallback=config["fallback"],
                           **config["env"]) as (p, _):
        p.lifecycle.serve("cli", None)  # renews its leases until it dies; takes nothing over
        job_id = await p.submit(provider=config["provider"])

        async def at_provider() -> bool:
            record = await p.storage.get_job(job_id)
            return record is not None and record.handle is not None

        await until(at_provider, within=20, what="at the provider")
        print(job_id, flush=True)
        await asyncio.Event().wait()  # until SIGKILL


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
