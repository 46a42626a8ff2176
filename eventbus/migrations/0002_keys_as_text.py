"""Project and actor ids become keys stored as text: UUIDs, integers or short strings.

Databases without a native UUID type (SQLite, MySQL) stored UUIDs as 32 hex digits;
they are rewritten in the canonical text that ``eventbus.ids.key_text`` writes now.
"""

from typing import Any
from uuid import UUID

from django.db import migrations, models


def canonical_uuids(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql":
        return  # its uuid -> varchar cast writes the canonical form already
    records = apps.get_model("eventbus", "EventRecord").objects.using(schema_editor.connection.alias)
    for column in ("project_id", "actor_id"):
        hex_values = (
            records.filter(**{f"{column}__regex": r"^[0-9a-f]{32}$"})
            .values_list(column, flat=True)
            .distinct()
        )
        for value in list(hex_values):
            records.filter(**{column: value}).update(**{column: str(UUID(value))})


class Migration(migrations.Migration):
    dependencies = [("eventbus", "0001_initial")]

    operations = [
        migrations.AlterField(
            model_name="eventrecord",
            name="project_id",
            field=models.CharField(blank=True, max_length=64, null=True),
        ),
        migrations.AlterField(
            model_name="eventrecord",
            name="actor_id",
            field=models.CharField(blank=True, max_length=64, null=True),
        ),
        migrations.RunPython(canonical_uuids, migrations.RunPython.noop),
    ]
