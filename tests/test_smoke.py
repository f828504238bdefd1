def test_create_and_get(client, user):
    created = client.post("/api/v1/todos", json={"title": "Buy milk"}, headers=user)
    assert created.status_code == 201
    todo = created.json()
    assert created.headers["location"] == f"/api/v1/todos/{todo['id']}"
    fetched = client.get(created.headers["location"], headers=user)
    assert fetched.json() == todo
