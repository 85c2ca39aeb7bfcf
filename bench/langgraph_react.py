"""The same multi-step task as `lotus bench reasoning`, through LangGraph's ReAct agent.

Usage: python3 bench/langgraph_react.py BASE_URL TASKS
BASE_URL is the OpenAI-compatible mock `lotus bench reasoning --langgraph` starts (it calls
this script itself). Prints JSON: the wall time of each measured task in nanoseconds.
Install: pip install -r bench/requirements-langgraph.txt
"""

import json
import sys
import time
from importlib.metadata import version

from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from langgraph.prebuilt import create_react_agent


@tool
def lookup(key: str) -> dict:
    """Looks a key up."""
    return {"key": key, "value": len(key)}


def main() -> None:
    base, tasks = sys.argv[1], int(sys.argv[2])
    warmup = max(tasks // 10, 1)
    llm = ChatOpenAI(
        base_url=base, api_key="sk-bench", model="bench-mock", streaming=True, max_retries=0
    )
    agent = create_react_agent(llm, [lookup])
    walls = []
    for i in range(warmup + tasks):
        t = time.perf_counter_ns()
        agent.invoke({"messages": [("user", "Look up the keys.")]})
        if i >= warmup:
            walls.append(time.perf_counter_ns() - t)
    print(
        json.dumps(
            {
                "task_ns": walls,
                "measured": tasks,
                "warmup": warmup,
                "versions": {p: version(p) for p in ("langgraph", "langchain-openai")},
            }
        )
    )


if __name__ == "__main__":
    main()
