"""AWS Lambda entry points (intake, worker, sweep) and the AWS adapters of the core's ports.

Lambda handler paths: `jitc.aws.intake.handler`, `jitc.aws.worker.handler`,
`jitc.aws.sweep.handler`.
"""
