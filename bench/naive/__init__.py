"""The naive durable-submit floor of ``make bench-peers``: one DRF view, one INSERT.

A plain Django + DRF app served like ours (uvicorn, 2 workers, PostgreSQL): the
same ``POST /api/v1/infer`` body, validated by a DRF serializer, stored by one
``Model.objects.create`` and answered 202 with the row's id. No keys, limits,
queue, doorbell or stream: what a durable submit costs at the least, the floor
our submit path is measured against.
"""
