"""The baseline for the benchmark: get and list written the straightforward way.

A SQLModel AsyncSession per request in a plain transaction (`async with session.begin()`),
the RLS context set with session.execute, a SQLAlchemy pool with pre-ping: the usual
FastAPI + SQLAlchemy handler, one round trip per step. Same tables, schemas and policies as
the service. Serve it with

    NEON_DATABASE_URL=... uvicorn bench.baseline:create_app --factory --port 8001
"""

import base64
import os
from typing import Annotated
from uuid import UUID

from fastapi import FastAPI, Header, HTTPException, Query
from sqlalchemy import text
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from db.connection import sqlalchemy_url
from db.models import Todo, TodoList, TodoPublic

SET_CONTEXT = text(
    "SELECT set_config('role', 'todo_app', true), set_config('app.user_id', :user_id, true)"
)

UserId = Annotated[UUID, Header(alias="X-User-ID")]


def encode_cursor(todo: TodoPublic) -> str:
    """The next page starts after this todo: its (created_at, id), base64url without padding."""
    raw = f"{todo.created_at.isoformat()}|{todo.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def create_app() -> FastAPI:
    # The service's pool holds 10 connections per worker; so does this one.
    engine = create_async_engine(
        sqlalchemy_url(os.environ["NEON_DATABASE_URL"]),
        pool_size=10,
        max_overflow=0,
        pool_pre_ping=True,
    )
    sessions = async_sessionmaker(engine, class_=AsyncSession, expire_on_commit=False)
    app = FastAPI(title="Baseline")

    @app.get("/api/v1/todos/{todo_id}", response_model=TodoPublic)
    async def get_todo(todo_id: UUID, user_id: UserId) -> Todo:
        async with sessions() as session, session.begin():
            await session.execute(SET_CONTEXT, {"user_id": str(user_id)})
            query = select(Todo).where(Todo.id == todo_id, Todo.user_id == user_id)
            todo = (await session.exec(query)).first()
        if todo is None:
            raise HTTPException(404)
        return todo

    @app.get("/api/v1/todos", response_model=TodoList)
    async def list_todos(
        user_id: UserId, limit: Annotated[int, Query(ge=1, le=1000)] = 1000
    ) -> TodoList:
        async with sessions() as session, session.begin():
            await session.execute(SET_CONTEXT, {"user_id": str(user_id)})
            query = (
                select(Todo)
                .where(Todo.user_id == user_id)
                .order_by(col(Todo.created_at).desc(), col(Todo.id).desc())
                .limit(limit + 1)
            )
            todos = (await session.exec(query)).all()
        items = [TodoPublic.model_validate(todo, from_attributes=True) for todo in todos[:limit]]
        next_cursor = encode_cursor(items[-1]) if len(todos) > limit else None
        return TodoList(items=items, count=len(items), next_cursor=next_cursor)

    return app
