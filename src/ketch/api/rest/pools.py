"""Pools: list, get, create or update (PUT), delete.

A pool caps the slots its task instances take while queued or running. As in
Airflow, deleting ``default_pool`` is refused with 400.
"""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Response, status

from ketch import operations
from ketch.api.rest.common import Limit, Offset, SessionDep, error_responses
from ketch.api.schemas.pools import PoolCollectionResponse, PoolPutBody, PoolResponse

router = APIRouter(prefix="/pools", tags=["Pool"])


@router.get("")
def list_pools(
    session: SessionDep, limit: Limit = 50, offset: Offset = 0
) -> PoolCollectionResponse:
    pools = operations.list_pools(session)
    return PoolCollectionResponse(
        pools=[PoolResponse.from_stats(p) for p in pools[offset : offset + limit]],
        total_entries=len(pools),
    )


@router.get("/{pool_name:path}", responses=error_responses(404))
def get_pool(pool_name: str, session: SessionDep) -> PoolResponse:
    return PoolResponse.from_stats(operations.get_pool(session, pool_name))


@router.put("/{pool_name:path}", responses=error_responses(400))
def put_pool(pool_name: str, body: PoolPutBody, session: SessionDep) -> PoolResponse:
    """Create the pool, or set its slots (and description, if given). 422 for bad values."""
    stats = operations.set_pool(session, pool_name, body.slots, body.description)
    session.commit()
    return PoolResponse.from_stats(stats)


@router.delete(
    "/{pool_name:path}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=error_responses(400, 404, _400="The default pool cannot be deleted"),
)
def delete_pool(pool_name: str, session: SessionDep) -> Response:
    """204; 404 unknown pool; 400 for the default pool."""
    try:
        operations.delete_pool(session, pool_name)
    except operations.DefaultPoolNotDeletable as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from exc
    session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)
