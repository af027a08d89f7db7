"""The federated core, framework-free: everything the Flower strategy and ClientApp call.

- :mod:`.state`: the server's state between rounds (model, mask plans, bases);
- :mod:`.sync`: what each node holds and must be sent (server half), and how
  a node applies a message (node half);
- :mod:`.schedule`: dense warm-up, the first mask, mask refresh;
- :mod:`.wire`: plain views of replies and safe decoding of their arrays;
- :mod:`.replies`: checks into ``Accepted`` or ``Rejected(reason)``, and
  combination of a round's replies;
- :mod:`.guard`: the bounds on a reply's weight and norm.

Nothing here imports Flower.
"""
