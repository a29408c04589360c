"""An endpoint's hosting: instance processes running the model container's code, variant pools, the request queue, invocations and sticky sessions."""
