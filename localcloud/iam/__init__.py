"""IAM enforcement: ``requests`` works out the action, resource and condition keys of a signed
request, ``policy`` evaluates the caller's policies for them, and ``guard`` is the WSGI guard in
front of the dispatcher that answers AWS's AccessDenied shape."""
