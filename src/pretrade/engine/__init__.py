"""The decision engine's Python side: the mapped table, the limit catalogue, money, the twin.

``table`` opens the shared table the compiled core (:mod:`pretrade._core`)
decides on; ``limits`` names every limit; ``fixedpoint`` owns every
conversion of money to and from text; ``reference`` is the slow, obvious
twin of the check pipeline (the oracle of the differential tests); and the
base every other room stands on: ``errors`` (the domain's exceptions),
``text`` (what an id may hold) and ``names`` (the contract's enum names).
Nothing here does I/O.
"""
