"""Application Auto Scaling for SageMaker variants: moto keeps the targets, policies and alarms;
``autoscaler`` acts on them (backlog metrics, target tracking and step scaling, to and from zero)."""
