"""Forwarding to upstreams: ``balancer`` (services, load balancing, canned 5xx), ``rewrite`` (what goes
upstream), ``client`` (pooled HTTP/1.1) and ``response`` (reading the upstream's answer)."""
