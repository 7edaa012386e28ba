"""FastChat's own code as the oracle, in a process of its own: FastChat's logger setup takes
over sys.stdout and sys.stderr of whatever imports it. Usage: python fastchat_oracle.py COMMAND
JSON; prints one JSON answer on the real stdout."""
import asyncio
import json
import sys


def prompts(args):
    """The prompts FastChat's openai_api_server builds for each conversation: it fetches the
    worker's conversation template and fills in a fastchat.conversation.Conversation."""
    from fastchat.serve import openai_api_server as server
    out = []
    for messages in args["conversations"]:
        params = asyncio.run(server.get_gen_params(
            args["model"], args["worker"], messages, temperature=0, top_p=1, top_k=-1, presence_penalty=0,
            frequency_penalty=0, max_tokens=8, echo=False, stop=None))
        out.append(params["prompt"])
    return {"prompts": out, "conv": server.conv_template_map[(args["worker"], args["model"])]}


def register(args):
    """FastChat's worker side of the controller protocol (BaseModelWorker): register, then a
    heartbeat, which asks the controller whether it still knows the worker."""
    from fastchat.conversation import get_conv_template
    from fastchat.serve.base_model_worker import BaseModelWorker

    class Worker(BaseModelWorker):
        def make_conv_template(self, conv_template=None, model_path=None):
            return get_conv_template("vicuna_v1.1")  # the model-based default needs torch

    w = Worker(args["controller"], args["address"], "w1", "/models/" + args["model"], [args["model"]], 5)
    w.register_to_controller()
    w.send_heart_beat()
    return {"registered": True}


if __name__ == "__main__":
    command, arguments = sys.argv[1], json.loads(sys.argv[2])
    answer = {"prompts": prompts, "register": register}[command](arguments)
    sys.__stdout__.write(json.dumps(answer) + "\n")
