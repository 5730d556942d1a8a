import uuid

from django.db import models


class Submission(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4)
    prompt = models.TextField()
    status = models.CharField(max_length=16, default="pending")
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return str(self.id)
