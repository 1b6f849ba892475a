"""AWS Lambda entry points (intake, worker, sweep) and the AWS adapters of the core's ports.

Lambda handler paths: `aws.intake.handler`, `aws.worker.handler`, `aws.sweep.handler`.
"""
