"""The ingress: the only door from Stripe into quotaflow.

It verifies each webhook against the tenant's secrets, checks the event's envelope, and
answers 200 only once the broker has acknowledged the raw body on `stripe.events`.
"""
