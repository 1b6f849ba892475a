"""The Azure Functions app (Python v2 programming model), loaded by the host from the app root.

The connector's code is the `jitc` package beside this file (`jitc.azure` is this folder), so
nothing here can shadow the Azure SDK's `azure` namespace.
"""

from __future__ import annotations

import azure.functions as func

from jitc.azure import intake, scheduled, worker

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)


@app.function_name("intake")
@app.route(route=intake.ROUTE, methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
def intake_http(req: func.HttpRequest) -> func.HttpResponse:
    return intake.handle(req)


@app.function_name("worker")
@app.queue_trigger(arg_name="msg", queue_name="%JITC_QUEUE_NAME%", connection="JitcQueue")
def worker_queue(msg: func.QueueMessage) -> None:
    worker.handle(msg)


def _timer(name: str, setting: str) -> None:
    def job(timer: func.TimerRequest) -> None:
        scheduled.run(name)

    job.__name__ = f"{name}_timer"
    app.function_name(name)(
        app.timer_trigger(arg_name="timer", schedule=f"%{setting}%", run_on_startup=False)(job)
    )


for _name, _job in scheduled.JOBS.items():
    _timer(_name, _job.schedule_setting)
