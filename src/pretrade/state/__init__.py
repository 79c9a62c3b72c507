"""Redis holds the truth; this room keeps the table equal to it.

``schema`` names every key and parses every value; ``connection`` makes the
clients; ``sync`` bulk-loads and follows keyspace notifications; ``prices``
follows the tick stream; ``journal`` makes decided orders durable;
``halts`` holds the kill switch, the circuit breakers and the halt observer.
"""
