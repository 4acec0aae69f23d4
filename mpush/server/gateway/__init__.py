"""
The push path inside a node: the gateway port that other nodes and back-ends
push through, the push centre that delivers to local devices, and the ack
tracking that answers pushes sent with an ack policy.
"""
