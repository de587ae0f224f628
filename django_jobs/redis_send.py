"""A Redis transaction sent without waiting for its answer.

redis-py's ``Pipeline.execute()`` sends a ``MULTI``/``EXEC`` transaction and waits for its answer
in one call. The default ``.delay()`` on a database whose row cannot be sent ahead (SQLite) sends
the job's push, writes and commits the row while Redis runs the push, and reads Redis's answer
last: :class:`SentPipeline`. Redis runs in a process of its own, so the two overlap.

Only redis-py's connection interface (``pack_commands``, ``send_packed_command``,
``read_response``) and the commands the pipeline queued are used. A pipeline that cannot be sent
so (Lua scripts to load first, a connection held for ``WATCH``, a cluster) is executed at once
instead, as ``Pipeline.execute()`` would.
"""

from __future__ import annotations

import inspect
from functools import cache
from typing import Any

from redis import ConnectionPool
from redis.client import EMPTY_RESPONSE, Pipeline
from redis.exceptions import ConnectionError, TimeoutError, WatchError


class SentPipeline:
    """The transaction queued on ``pipeline``, sent to Redis; its answer not read yet.

    Sending raises as ``Pipeline.execute()`` does when Redis cannot be reached (a pooled
    connection that Redis closed is replaced once, as redis-py's retry would). Call
    :meth:`finish` to read the answer, or :meth:`abandon` to give the connection up without it.
    """

    def __init__(self, pipeline: Pipeline) -> None:
        self._connection: Any = None
        commands = pipeline.command_stack
        if not _can_send(pipeline):
            pipeline.execute()
            return
        pool = pipeline.connection_pool
        connection: Any = (
            pool.get_connection() if _pool_takes_no_command(type(pool)) else pool.get_connection("MULTI")
        )
        try:
            packed = connection.pack_commands([("MULTI",), *(args for args, _options in commands), ("EXEC",)])
            try:
                connection.send_packed_command(packed)
            except (ConnectionError, TimeoutError):
                # Nothing ran: a transaction without its EXEC is dropped with its connection.
                connection.disconnect()
                connection.send_packed_command(packed)
        except BaseException:
            connection.disconnect()
            pool.release(connection)
            raise
        self._pool, self._connection, self._count = pool, connection, len(commands)
        pipeline.reset()

    def finish(self) -> None:
        """Read the answer; raise the first error in it (a ``ResponseError``, or a
        ``ConnectionError`` if the connection was lost: then the transaction may have run)."""
        connection, self._connection = self._connection, None
        if connection is None:
            return  # executed at once, or abandoned
        try:
            for _reply in range(self._count + 1):  # MULTI's OK, then each command's QUEUED
                connection.read_response()
            results = connection.read_response()  # EXEC's
        except BaseException:
            connection.disconnect()  # the replies not read go with it
            raise
        finally:
            self._pool.release(connection)
        if results is None:
            raise WatchError("Watched variable changed.")
        for result in results:
            if isinstance(result, Exception):
                raise result

    def abandon(self) -> None:
        """Give the connection up without reading the answer (the transaction may have run)."""
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.disconnect()
            self._pool.release(connection)


def _can_send(pipeline: Pipeline) -> bool:
    return (
        type(pipeline) is Pipeline
        and isinstance(pipeline.connection_pool, ConnectionPool)
        and (vars(pipeline).get("transaction") is True or pipeline.explicit_transaction)
        and pipeline.connection is None
        and not pipeline.watching
        and not pipeline.scripts
        and bool(pipeline.command_stack)
        and all(EMPTY_RESPONSE not in options for _args, options in pipeline.command_stack)
    )


@cache
def _pool_takes_no_command(pool_class: type[ConnectionPool]) -> bool:
    """Whether ``get_connection()`` takes no command name (redis-py 5.3 and later warn if given
    one; before, it was required)."""
    parameter = inspect.signature(pool_class.get_connection).parameters.get("command_name")
    return parameter is None or parameter.default is not inspect.Parameter.empty
