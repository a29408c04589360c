"""Building blocks of the docflow flows, one package per domain or stage: ``params`` (the flows'
parameter groups), ``aws`` (clients and AWS plumbing), ``model`` (sources and packaging),
``endpoint`` (deploy, topics, autoscaling), ``corpus`` (reading inputs), ``capacity`` (the
endpoint's shared cap), ``sharding`` (child runs), ``run`` (one document run) and ``ask``
(questions on sessions); ``settings`` holds the deployment profiles."""
