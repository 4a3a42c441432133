"""Attack: grow one Python list of small objects to twice the memory cap (many small allocations)."""

# A one-element list and its int: about 100 bytes each.
ITEM_BYTES = 100


def run(channel):
    items = []
    for index in range(2 * (channel.request()["memory_mb"] << 20) // ITEM_BYTES):
        items.append([index])
    return {"items": len(items)}, {}
