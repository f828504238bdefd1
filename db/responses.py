"""The API's JSON, written by PostgreSQL: SQL expressions for a todo's body and a page's cursor."""

TODO_FIELDS = ("id", "user_id", "title", "description", "is_completed")


def timestamp(column: str) -> str:
    """`column` as Python's isoformat() writes a UTC datetime, as the API always has: six digits
    of microseconds, none when they are all zero, and the offset of the TimeZone the context
    pins (+00:00). PostgreSQL's own JSON of a timestamp trims trailing zeros instead."""
    return f"replace(to_char({column}, 'YYYY-MM-DD\"T\"HH24:MI:SS.USTZH:TZM'), '.000000+', '+')"


def todo(row: str) -> str:
    """The JSON of the todo in `row` (a table's or subquery's name), as `TodoPublic` declares it:
    its fields in order, compact (row_to_json writes no spaces; json_build_object would)."""
    fields = [f"{row}.{name}" for name in TODO_FIELDS]
    fields += [f"{timestamp(f'{row}.{name}')} AS {name}" for name in ("created_at", "updated_at")]
    return f"(SELECT row_to_json(todo) FROM (SELECT {', '.join(fields)}) AS todo)"


def cursor(row: str) -> str:
    """The cursor of the page after the todo in `row`: its created_at and id, base64url without
    padding (db.todos.decode_cursor reads it). PostgreSQL's base64 breaks lines; they go too."""
    raw = f"convert_to({timestamp(f'{row}.created_at')} || '|' || {row}.id, 'UTF8')"
    return f"rtrim(translate(encode({raw}, 'base64'), E'+/\\n', '-_'), '=')"
