"""Talking to the jobs database: the SQL of the row writes, and the PostgreSQL wire path.

- :mod:`.statements`: the ``INSERT`` of a new job's row (one or many), the start
  and finish ``UPDATE`` statements, built once per database.
- :mod:`.postgres`: sending a statement to PostgreSQL without waiting for its
  answer, prepared statements, and a pair of statements in one libpq pipeline.
- :mod:`.connections`: checking and dropping connections around jobs and forks.
"""
