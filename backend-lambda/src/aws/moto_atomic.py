"""moto's server, with DynamoDB's item operations made atomic with respect to each other.

moto serves requests on several threads and its DynamoDB transactions take no lock: a
`TransactWriteItems` checks its conditions and then writes, and another request's thread can
run in between. Two transactions guarded on the same sequence counter can then both pass,
which real DynamoDB never allows (a transaction is atomic and isolated). The AWS-mode tests
check exactly that guard (two writers keep a user's change log dense), so they start moto
through this wrapper: one lock around every DynamoDB item read and write. Everything else
(S3, SQS long polls, STS) stays concurrent as in moto itself.

Usage: python moto_atomic.py -H 127.0.0.1 -p PORT   (the arguments of moto_server)
"""

import functools
import threading

from moto.dynamodb.models import DynamoDBBackend
from moto.server import main

_ITEM_OPERATIONS = (
    "get_item",
    "put_item",
    "update_item",
    "delete_item",
    "query",
    "scan",
    "transact_write_items",
)
_lock = threading.RLock()


def _atomic(operation):
    @functools.wraps(operation)
    def locked(*args, **kwargs):
        with _lock:
            return operation(*args, **kwargs)

    return locked


for _name in _ITEM_OPERATIONS:
    setattr(DynamoDBBackend, _name, _atomic(getattr(DynamoDBBackend, _name)))

if __name__ == "__main__":
    main()
