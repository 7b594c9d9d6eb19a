"""The keys every feature is attached to."""

from feast import Entity, ValueType

user = Entity(
    name="user",
    join_keys=["user_id"],
    value_type=ValueType.STRING,
    description="A person who receives recommendations; user_id as in interaction_events.",
)

item = Entity(
    name="item",
    join_keys=["item_id"],
    value_type=ValueType.STRING,
    description="A catalogue item; item_id as in the items table.",
)
